"""Prefect tasks (installed as ``unsir_pipeline.tasks``): each task is one step of a flow and
holds its body, calling the core library and the one module of each external system."""
