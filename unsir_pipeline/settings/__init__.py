"""Configuration and workspace: ``params.yaml`` validated once, where a project's files live,
and the process settings (threads, signals, MLflow's environment). Imports only the
core library."""
