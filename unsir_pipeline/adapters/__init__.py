"""One module per external system: the MLflow registry (and its served model), Prefect's
temporary server and run-history database (orchestration), DVC, Great Expectations, SQLite files,
git, the prepared data on disk and matplotlib's figures. Each is
the only code that talks to its system; everything above calls it."""
