"""The deletion-request store and the audit trail at production scale: what one more intake,
withdrawal, claim or audit costs once N requests have gone through (no training, no unlearning).

A temporary project on the default SQLite state: ``unsir init``, the digits data prepared, and an
*untrained* model registered as champion and original (the state paths read its tags only). The
history grows in rounds of 100 requests, written by the functions the commands use: each
accepted request stored and recorded as ``unsir request add`` does (``RequestStore.add``, then
``intake._record_received``), a refused one as its refusal is (``add_rejected``, then
``request_refused``), a withdrawn one as ``unsir request withdraw`` records it; then a real
``claim_batch`` takes the round's pending requests, and they end as a batch whose classes the
champion had forgotten already ends them (``batch_started``, ``mark_done``, ``batch_finished``,
which anchors the trail in the registry). Per 100: 80 done, 10 withdrawn, 10 refused; at each
size, 5% of N more wait pending. ``unsir request add`` itself is not called in the loop: its
registry reads cost ~0.1 s a request, hours at 8000; the trail is the same and `audit verify`
passes on it at every size (checked).

At each N, on a copy of the state restored before every repeat (a claim changes it), the median
of ``--repeats`` runs (``--cli-repeats`` for the CLI) of:
- in-process calls (the state paths alone, no interpreter start): ``intake_trail`` (what every
  intake, claim and withdrawal opens with), ``file_request`` (`request add`), ``withdraw_request``,
  ``RequestStore.list("pending")``, ``claim_batch``, ``verify_trail`` (`audit verify`),
  ``request_history`` (`audit show --request`) and ``write_batch_report`` (`audit report`);
- the CLI in a subprocess, as a user waits for it (interpreter start and imports included):
  ``request add``, ``request withdraw``, ``request list --status pending``, ``audit verify``,
  ``audit show --request``.

    python benchmarks/state_scale.py                       # N = 500, 2000, 8000
    python benchmarks/state_scale.py --sizes 200 800 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("UNSIR_PROGRESS", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

ROUND = 100  # requests per history round: 80 done, 10 withdrawn, 10 refused
PENDING_SHARE = 0.05
STATE_SUFFIXES = ("", "-wal", "-shm")
CLI = [sys.executable, "-m", "unsir_pipeline.cli"]


def make_project(root: Path):
    """A new project with its data prepared and an untrained champion registered (no training)."""
    from unsir.checkpoint import ModelCard, save_checkpoint
    from unsir.models import ModelSpec, build_model
    from unsir.problem import prepare_splits
    from unsir.splits import select
    from unsir_pipeline.adapters.prepared_data import load_prepared
    from unsir_pipeline.adapters.provenance import git_commit
    from unsir_pipeline.adapters.registry import registry_for
    from unsir_pipeline.cli.project_templates import init_project
    from unsir_pipeline.governance.promotion import DATA_DIGESTS_TAG, FORGOTTEN_TAG
    from unsir_pipeline.settings.workspace import Workspace
    from unsir_pipeline.stages import prepare_data

    init_project(root)
    ws = Workspace.load(root)
    prepare_data(ws)
    data, manifest = load_prepared(ws)
    splits = prepare_splits(data, manifest)
    m = ws.params.model
    spec = ModelSpec(m.arch, data.num_classes, data.input_shape[0], dict(m.kwargs))
    card = ModelCard(spec, splits.normalization, data.class_names, data.input_shape)
    save_checkpoint(ws.original_model_dir, build_model(spec), card)
    test_images, _ = select(data, manifest[manifest["split"] == "test"].head(2))
    registry = registry_for(ws)
    tags = {
        FORGOTTEN_TAG: "[]",
        "origin": "bootstrap",
        "params_digest": ws.params.digest(),
        DATA_DIGESTS_TAG: "{}",
        "git_commit": git_commit(ws.root),
    }
    with registry.start_run(run_name="bootstrap") as run_id:
        version = registry.register_checkpoint(
            ws.original_model_dir,
            input_example=test_images.numpy(),
            tags={**tags, "mlflow_run_id": run_id},
            idempotency_key="bench-original",
            alias=ws.params.registry.champion_alias,
        )
    registry.set_alias("original", version)
    return ws


def add_accepted(ws, store, audit, serial: int):
    from unsir_pipeline.governance import intake

    cls = serial % 9  # never class 9: a class always remains, however many wait
    request = store.add([cls], [str(cls)], f"user-{serial}", "consent withdrawn", requested=[str(cls)])
    intake._record_received(ws, audit, request, {"champion_version": 1})
    return request


def add_refused(ws, store, audit, serial: int) -> None:
    from unsir_pipeline.governance.stores import intake_key
    from unsir_pipeline.governance.trail import provenance

    refusal = "classes ['nine-and-a-half'] are not classes of the data set"
    request = store.add_rejected([], [], f"user-{serial}", "typo", refusal, requested=["nine-and-a-half"])
    audit.append(
        "request_refused",
        actor=request.requester,
        request_ids=[request.id],
        payload={"requested": ["nine-and-a-half"], "reason": "typo", "refusal": refusal, **provenance(ws)},
        idempotency_key=intake_key(request.id),
    )


def withdraw(ws, store, audit, request_id: str) -> None:
    from unsir_pipeline.governance.stores import withdrawal_key, withdrawal_payload
    from unsir_pipeline.governance.trail import provenance

    request = store.withdraw(request_id, "ops", "filed twice")
    audit.append(
        "request_withdrawn",
        actor="ops",
        request_ids=[request.id],
        payload={**withdrawal_payload(request), "reason": "filed twice", **provenance(ws)},
        idempotency_key=withdrawal_key(request.id),
    )


def run_batch(ws) -> str | None:
    """Claim the pending requests as a batch does, and end them as a batch whose classes the
    champion had forgotten already ends them."""
    from unsir_pipeline.governance import claims, stores, trail

    batch = claims.claim_batch(ws)
    if batch is None:
        return None
    trail.record(ws, batch, "batch_started", {"classes": batch.classes, "attempts": {r.id: 1 for r in batch.requests}})
    stores.request_store(ws).mark_done(batch.batch_id, 1)
    trail.record(ws, batch, "batch_finished", {"model_version": 1, "note": "classes already forgotten by the champion"})
    return batch.batch_id


def grow(ws, total: int, serial: int) -> tuple[int, str | None]:
    """Add rounds until the store holds ``total`` requests less the pending share, then that
    share pending. Returns the next serial and the last batch's id."""
    from unsir_pipeline.governance import stores

    store, audit = stores.request_store(ws), stores.audit_log(ws)
    pending = int(total * PENDING_SHARE)
    last_batch = None
    while len(store.list()) + ROUND <= total - pending:
        for i in range(ROUND):
            serial += 1
            if i % 10 == 0:
                add_refused(ws, store, audit, serial)
            elif i % 10 == 1:
                withdraw(ws, store, audit, add_accepted(ws, store, audit, serial).id)
            else:
                add_accepted(ws, store, audit, serial)
        last_batch = run_batch(ws) or last_batch
    while len(store.list()) < total:
        serial += 1
        add_accepted(ws, store, audit, serial)
    return serial, last_batch


def state_files(ws) -> list[Path]:
    base = [ws.path(ws.params.requests.store), ws.path(ws.params.requests.audit_log)]
    files = [p.with_name(p.name + suffix) for p in base for suffix in STATE_SUFFIXES]
    return [*files, base[1].with_name(base[1].name + ".head")]


def snapshot(ws, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for path in state_files(ws):
        if path.exists():
            shutil.copy2(path, into / path.name)


def restore(ws, source: Path) -> None:
    for path in state_files(ws):
        path.unlink(missing_ok=True)
        if (source / path.name).exists():
            shutil.copy2(source / path.name, path)


def timed(ws, saved: Path, repeats: int, job: Callable[[], object]) -> float:
    """The median wall time of ``job`` over ``repeats`` runs, each on the state as saved."""
    times = []
    for _ in range(repeats):
        restore(ws, saved)
        started = time.perf_counter()
        job()
        times.append(time.perf_counter() - started)
    restore(ws, saved)
    return statistics.median(times)


def cli(ws, *args: str) -> Callable[[], object]:
    def run() -> None:
        done = subprocess.run([*CLI, "--project", str(ws.root), *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"unsir {' '.join(args)} exited {done.returncode}: {done.stderr[-2000:]}")

    return run


def measure(ws, saved: Path, repeats: int, cli_repeats: int, last_batch: str) -> dict[str, float]:
    from unsir_pipeline.governance import auditor, claims, intake, stores

    store = stores.request_store(ws)
    pending_id = store.list("pending")[-1].id
    done_id = store.list("done")[-1].id
    report = ws.root / "reports" / "bench-evidence.html"
    check = auditor.verify_trail(ws)
    if not check.ok:
        raise RuntimeError(f"the built trail does not verify: {check.chain.problem} {check.problems[:3]}")
    jobs: dict[str, Callable[[], object]] = {
        "intake_trail": lambda: stores.intake_trail(ws),
        "request add": lambda: intake.file_request(ws, ["3"], "bench", "timed"),
        "request withdraw": lambda: intake.withdraw_request(ws, pending_id, "bench", "timed"),
        "request list --status pending": lambda: stores.existing_request_store(ws).list("pending"),
        "batch claim": lambda: claims.claim_batch(ws),
        "audit verify": lambda: auditor.verify_trail(ws),
        "audit show --request": lambda: auditor.request_history(ws, done_id),
        "audit report": lambda: auditor.write_batch_report(ws, last_batch, report),
    }
    figures = {f"{name} (in-process)": timed(ws, saved, repeats, job) for name, job in jobs.items()}
    commands = {
        "request add": ("request", "add", "3", "--by", "bench", "--reason", "timed"),
        "request withdraw": ("request", "withdraw", pending_id, "--by", "bench", "--reason", "timed"),
        "request list --status pending": ("request", "list", "--status", "pending"),
        "audit verify": ("audit", "verify"),
        "audit show --request": ("audit", "show", "--request", done_id),
    }
    for name, args in commands.items():
        figures[f"{name} (CLI)"] = timed(ws, saved, cli_repeats, cli(ws, *args))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000, 8000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--cli-repeats", type=int, default=1, help="runs of each CLI command (seconds each: interpreter start, imports)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="unsir-state-scale-") as tmp:
        started = time.perf_counter()
        ws = make_project(Path(tmp) / "project")
        print(f"project made in {time.perf_counter() - started:.1f} s", flush=True)
        from unsir_pipeline.governance import stores

        results: dict[int, dict[str, float]] = {}
        serial, last_batch = 0, None
        for n in sorted(args.sizes):
            started = time.perf_counter()
            serial, batch = grow(ws, n, serial)
            last_batch = batch or last_batch
            assert last_batch is not None, "a size below one round leaves no batch to report on"
            records = len(stores.audit_log(ws).records())
            print(f"N={n}: built ({records} audit records) in {time.perf_counter() - started:.1f} s", flush=True)
            saved = Path(tmp) / f"state-{n}"
            snapshot(ws, saved)
            results[n] = measure(ws, saved, args.repeats, args.cli_repeats, last_batch)
            for name, seconds in results[n].items():
                print(f"  {name:<42}{seconds * 1000:>10.1f} ms", flush=True)

    sizes = sorted(results)
    small, large = sizes[0], sizes[-1]
    print(f"\nmedian of {args.repeats} (CLI: {args.cli_repeats}), ms; growth = time at N={large} / time at N={small}")
    print(f"{'operation':<42}" + "".join(f"{f'N={n}':>10}" for n in sizes) + f"{'growth':>9}")
    for name in results[small]:
        row = "".join(f"{results[n][name] * 1000:>10.1f}" for n in sizes)
        print(f"{name:<42}{row}{results[large][name] / results[small][name]:>8.1f}x")
    if args.json:
        args.json.write_text(json.dumps({str(n): figures for n, figures in results.items()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
