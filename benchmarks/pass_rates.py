"""How sure are the pass shares? Intervals, and UNSIR against a second retraining, run by run.

``quality.py`` reports the share of runs that pass the three bounds, for the shipped recipe and
for a second retraining judged by the same bounds against the first (what the bounds leave
achievable). On 12 to 75 runs such shares are estimates; this reads the committed JSON and says
how far each could be from the truth, and whether the recipe and the second retraining differ
by more than chance:

- a **Wilson 95% interval** for each pass share;
- the **paired comparison**: both methods run on the same setting (seed, class set, original,
  retrained reference), so the runs only one of them passes carry the difference. ``b`` counts
  the runs the recipe passes and the second retraining fails, ``c`` the reverse; under "no
  difference" each such run is a fair coin, and the exact two-sided McNemar p-value is the
  binomial tail of min(b, c) in b + c tosses.

A second table splits the retain-accuracy failures by where the *parent* stood: the bound
compares the unlearned model with a model retrained on one class fewer, and where the parent
(the original, trained on every class) already sits below that bound, keeping the parent's retain
accuracy is not enough. It gives, per group with a retain failure, how many of them had such a
parent, and the unlearned model's retain accuracy against its parent's (mean and worst, every
run), beside the retrained model's against the same parent.

A setting measured by several files (re-runs of one grid) counts once, from the file listed
last. Reads only; trains nothing.

    python benchmarks/pass_rates.py                 # the runs benchmarks/README.md reports
    python benchmarks/pass_rates.py reports/bench/quality-retain-20.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from quality import MAX_RETAIN_GAP, gate_passes

BENCH = Path(__file__).resolve().parent.parent / "reports" / "bench"
# The runs benchmarks/README.md reports, in the order its tables quote them; a later file's run
# of the same setting replaces an earlier one (the AllCNN head-round re-run replaces quality-deep's).
REPORTED = (
    "quality-tuning-shipped.json",
    "quality-heldout-blas1.json",
    "quality-unseen-seeds.json",
    "quality-heldout-amd.json",
    "quality-unseen-seeds89.json",
    "quality-mnist5k-final.json",
    "quality-mnist5k-seed4.json",
    "quality-mnist5k-seed5.json",
    "quality-deep.json",
    "quality-allcnn-head-round.json",
    "quality-deep-seeds56.json",
    "unseen-architectures-compact.json",
    "unseen-architectures-deep.json",
    "unseen-architectures-deep-seed5.json",
    "unseen-architectures-mnist5k.json",
)
METHOD = "shipped"
REFERENCE = "retrain_again"
Z95 = 1.959964


def wilson_interval(passes: int, runs: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a binomial share: unlike the normal approximation it stays
    inside [0, 1] and keeps its coverage near 0% and 100%, where these shares sit."""
    if runs == 0:
        return (0.0, 1.0)
    share = passes / runs
    centre = (share + z * z / (2 * runs)) / (1 + z * z / runs)
    half = z * math.sqrt(share * (1 - share) / runs + z * z / (4 * runs * runs)) / (1 + z * z / runs)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_exact_p(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: the chance, were both methods equally good, of a split of
    the discordant runs at least this uneven."""
    discordant = only_first + only_second
    if discordant == 0:
        return 1.0
    tail = sum(math.comb(discordant, k) for k in range(min(only_first, only_second) + 1)) / 2**discordant
    return min(1.0, 2 * tail)


def runs_by_group(paths: list[Path]) -> dict[tuple[str, str, str], dict[tuple, dict]]:
    """Per (data set, architecture, half): each setting's run that has both methods, the file
    listed last winning."""
    groups: dict[tuple[str, str, str], dict[tuple, dict]] = {}
    for path in paths:
        report = json.loads(path.read_text())
        for result in report["architectures"]:
            group = groups.setdefault((report["dataset"], result["arch"], report["part"]), {})
            for run in result["runs"]:
                if METHOD in run and REFERENCE in run:
                    group[(run["seed"], tuple(run["forget_classes"]))] = run
    return groups


def passes(run: dict) -> tuple[bool, bool]:
    """(the recipe passes, the second retraining passes) on one setting."""
    return (gate_passes(run[METHOD]), gate_passes(run[REFERENCE]))


def retain_against_parent(runs: list[dict]) -> dict:
    """The recipe's retain failures, and how many of them had a parent already below the bound;
    the recipe's and the retrained model's retain accuracy minus the parent's, in points."""

    def points(name: str) -> list[float]:
        return [100 * (run[name]["retain_acc"] - run["original"]["retain_acc"]) for run in runs]

    failures = [run for run in runs if not run[METHOD]["pass"]["retain"]]
    recipe, retrained = points(METHOD), points("retrain")
    return {
        "runs": len(runs),
        "retain_failures": len(failures),
        "parent_below_bound": sum(
            run["original"]["retain_acc"] < run["retrain"]["retain_acc"] - MAX_RETAIN_GAP for run in failures
        ),
        METHOD + "_minus_parent_pts": {"mean": sum(recipe) / len(recipe), "worst": min(recipe)},
        "retrain_minus_parent_pts": {"mean": sum(retrained) / len(retrained), "worst": min(retrained)},
    }


def compare(pairs: list[tuple[bool, bool]]) -> dict:
    runs = len(pairs)
    method = sum(m for m, _ in pairs)
    reference = sum(r for _, r in pairs)
    only_method = sum(m and not r for m, r in pairs)
    only_reference = sum(r and not m for m, r in pairs)
    return {
        "runs": runs,
        METHOD: {"passes": method, "wilson95": wilson_interval(method, runs)},
        REFERENCE: {"passes": reference, "wilson95": wilson_interval(reference, runs)},
        "only_" + METHOD: only_method,
        "only_" + REFERENCE: only_reference,
        "both_fail": sum(not m and not r for m, r in pairs),
        "mcnemar_p": mcnemar_exact_p(only_method, only_reference),
    }


def print_row(label: str, row: dict) -> None:
    def share(name: str) -> str:
        passes, (low, high) = row[name]["passes"], row[name]["wilson95"]
        return f"{passes:3d} ({passes / row['runs']:6.1%}, 95% {low:5.1%}-{high:5.1%})"

    print(
        f"{label:<38} {row['runs']:4d}  {share(METHOD)}  {share(REFERENCE)}  "
        f"{row['only_' + METHOD]:3d} {row['only_' + REFERENCE]:3d} {row['both_fail']:3d}  {row['mcnemar_p']:.3f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("reports", nargs="*", type=Path, help="quality.py JSON files (default: the reported runs)")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    paths = args.reports or [BENCH / name for name in REPORTED]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        parser.error(f"no such report: {', '.join(missing)}")

    groups = runs_by_group(paths)
    print(
        f"{'data / arch / half':<38} {'runs':>4}  {METHOD + ' passes':<31}  {REFERENCE + ' passes':<31}  "
        f"only-{METHOD[:4]} only-{REFERENCE[:7]} both-fail  McNemar p"
    )
    rows: dict[str, dict] = {}
    for (dataset, arch, part), settings in sorted(groups.items()):
        label = f"{dataset} / {arch} / {part}"
        rows[label] = compare([passes(run) for run in settings.values()])
        print_row(label, rows[label])
    for part in sorted({part for _, _, part in groups}):
        pooled = [passes(run) for (_, _, p), settings in groups.items() if p == part for run in settings.values()]
        label = f"all / all / {part}"
        rows[label] = compare(pooled)
        print_row(label, rows[label])

    print(
        f"\n{'retain failures against the parent':<38} {'runs':>4}  {'failures':>8}  {'parent below bound':>18}  "
        f"{METHOD + ' - parent, pts mean / worst':>30}  {'retrained - parent, pts mean / worst':>36}"
    )
    parents: dict[str, dict] = {}
    for (dataset, arch, part), settings in sorted(groups.items()):
        row = retain_against_parent(list(settings.values()))
        if not row["retain_failures"]:
            continue
        label = f"{dataset} / {arch} / {part}"
        parents[label] = row
        recipe, retrained = row[METHOD + "_minus_parent_pts"], row["retrain_minus_parent_pts"]
        print(
            f"{label:<38} {row['runs']:4d}  {row['retain_failures']:8d}  {row['parent_below_bound']:18d}  "
            f"{recipe['mean']:+14.2f} / {recipe['worst']:+6.2f}{'':8}  "
            f"{retrained['mean']:+20.2f} / {retrained['worst']:+6.2f}"
        )
    if args.out:
        figures = {"reports": [str(p) for p in paths], "comparisons": rows, "retain_against_parent": parents}
        args.out.write_text(json.dumps(figures, indent=2) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
