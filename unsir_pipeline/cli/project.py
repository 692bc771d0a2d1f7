"""``unsir init``, ``bootstrap`` and ``stage``: a new project created, its first run (the data
prepared and versioned, the original model trained and registered), and one DVC stage run (what
``dvc repro`` calls)."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from unsir_pipeline.cli.common import emit, load_workspace, progress_lines
from unsir_pipeline.cli.errors import EXIT_FAILED, EXIT_USAGE

if TYPE_CHECKING:
    from unsir_pipeline.settings.workspace import Workspace


def cmd_bootstrap(project: Path, args) -> int:
    from unsir_pipeline.cli.bootstrap import bootstrap

    result = bootstrap(load_workspace(project, args), progress=progress_lines(args))
    if args.json:
        print(json.dumps({"version": result.version, "created": result.created, "test_acc": result.test_acc}))
    elif result.created:
        print(
            f"registered the original model as version {result.version} (champion), test accuracy {result.test_acc:.4f}"
        )
    else:
        print(f"already bootstrapped: champion is version {result.version}")
    return 0


def cmd_init(args) -> int:
    from unsir_pipeline.adapters.data_versioning import DataVersioningError
    from unsir_pipeline.cli.project_templates import ProjectInitError, init_project
    from unsir_pipeline.settings.config import ConfigError

    try:
        result = init_project(args.directory)
    except (ProjectInitError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except DataVersioningError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(
            json.dumps(
                {
                    "project": str(result.root),
                    "written": list(result.written),
                    "git_initialised": result.git_initialised,
                    "dvc_remote": result.dvc_remote,
                }
            )
        )
        return 0
    print(
        f"created project {result.root}: {', '.join(result.written)}"
        + (" (new git repository)" if result.git_initialised else "")
    )
    print(f"DVC remote: {result.dvc_remote} (set UNSIR_DVC_REMOTE for a shared one; docs/dvc.md)")
    print(f"next: cd {result.root} && unsir bootstrap")
    return 0


def cmd_stage(project: Path, args) -> int:
    from unsir_pipeline import stages
    from unsir_pipeline.cli.progress import relayed_stderr, setting

    ws = load_workspace(project, args)
    stage_by_name: dict[str, Callable[[Workspace], object]] = {
        "prepare": stages.prepare_data,
        # Its epochs unless progress is off: DVC runs it with stderr captured, not on a terminal.
        "train": functools.partial(stages.train_original, progress=setting() is not False),
        "unlearn": stages.unlearn_original,
        "evaluate": stages.evaluate_unlearned,
    }
    with relayed_stderr():  # run by `dvc repro` under `unsir bootstrap`: epochs reach its terminal
        out = stage_by_name[args.name](ws)
    emit(args, {"stage": args.name, "output": out if isinstance(out, dict) else str(out)}, f"stage {args.name}: {out}")
    return 0
