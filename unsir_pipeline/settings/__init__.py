"""Configuration and workspace: ``params.yaml`` validated once, where a project's files live,
and the process settings (threads, Prefect's start-up, MLflow's environment). Imports only the
core library."""
