"""Prefect tasks: thin wrappers that call one pipeline step, log, and return a small handle."""
