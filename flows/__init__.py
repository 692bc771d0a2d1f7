"""Prefect flows (installed as ``unsir_pipeline.flows``): fixed sequences of the tasks in
``tasks/``."""
