#!/bin/sh
# Runs one pipeline stage (`dvc repro` calls this) with a Python that has unsir-pipeline
# installed, so that `dvc repro` works without an activated virtual environment.
# UNSIR_PYTHON, when set, is used as is (`unsir bootstrap` sets it to its own interpreter);
# otherwise the first of python3, python, .venv/bin/python, venv/bin/python that can import
# both unsir_pipeline and torch (checked in isolated mode, so a source tree in the current
# directory does not count as an installation).
set -eu
if [ -n "${UNSIR_PYTHON:-}" ]; then
    exec "$UNSIR_PYTHON" -m unsir_pipeline.cli stage "$@"
fi
check='import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in ("unsir_pipeline", "torch")))'
for candidate in python3 python .venv/bin/python venv/bin/python; do
    if "$candidate" -I -c "$check" >/dev/null 2>&1; then
        exec "$candidate" -m unsir_pipeline.cli stage "$@"
    fi
done
echo "error: no Python with unsir-pipeline installed for stage '$*' (tried python3, python," \
     ".venv/bin/python, venv/bin/python); set UNSIR_PYTHON=/path/to/python or activate its environment" >&2
exit 127
