"""Run mypy on the packages under the names they are installed as (`make lint`).

pyproject.toml's package-dir installs the top-level flows/ and tasks/ folders as
unsir_pipeline.flows and unsir_pipeline.tasks. mypy follows neither that mapping nor the
import hook of an editable install: given the folders, it would check them as top-level
`flows` and `tasks` packages and find no `unsir_pipeline.flows` to import. So this renames
those sources to their installed names, then runs mypy's build as `mypy` does, with
[tool.mypy]'s files and settings and any extra command-line arguments.
"""

from __future__ import annotations

import sys
import time
import tomllib
from pathlib import Path

from mypy import util
from mypy.fscache import FileSystemCache
from mypy.main import process_options, run_build

ROOT = Path(__file__).resolve().parents[1]
# {"flows": "unsir_pipeline.flows", "tasks": "unsir_pipeline.tasks"}
FOLDER_TO_PACKAGE = {
    folder: package
    for package, folder in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"
    ].items()
}


def installed_name(module: str) -> str:
    top, dot, rest = module.partition(".")
    return FOLDER_TO_PACKAGE[top] + dot + rest if top in FOLDER_TO_PACKAGE else module


def main(args: list[str]) -> int:
    # mypy's own main() without its optional modes; the summary line is the same.
    t0 = time.time()
    fscache = FileSystemCache()
    sources, options = process_options(args, fscache=fscache)
    for source in sources:
        source.module = installed_name(source.module)
    _, messages, blockers = run_build(sources, options, fscache, t0, sys.stdout, sys.stderr)
    formatter = util.FancyFormatter(sys.stdout, sys.stderr, options.hide_error_codes)
    n_errors, n_notes, n_files = util.count_stats(messages)
    if n_errors:
        print(formatter.format_error(n_errors, n_files, len(sources), blockers=blockers, use_color=False))
    else:
        print(formatter.format_success(len(sources), use_color=False))
    if messages and n_notes < len(messages):
        return 2 if blockers else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
