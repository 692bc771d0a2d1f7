"""Prefect flows: fixed sequences of the tasks in ``tasks/``."""
