"""The statistics benchmarks/pass_rates.py puts beside the benchmark's pass shares."""

import sys
from pathlib import Path

import pytest
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from pass_rates import compare, mcnemar_exact_p, retain_against_parent, wilson_interval  # noqa: E402


@pytest.mark.parametrize(("passes", "runs"), [(68, 75), (0, 12), (12, 12), (2, 13)])
def test_wilson_interval_matches_scipy_and_holds_the_share(passes, runs):
    low, high = wilson_interval(passes, runs)
    expected = binomtest(passes, runs).proportion_ci(confidence_level=0.95, method="wilson")
    assert (low, high) == pytest.approx((expected.low, expected.high), abs=1e-6)
    assert low <= passes / runs <= high


@pytest.mark.parametrize(("only_first", "only_second"), [(31, 4), (10, 10), (0, 4), (3, 13)])
def test_mcnemar_exact_p_is_the_binomial_test_of_the_discordant_runs(only_first, only_second):
    expected = binomtest(only_first, only_first + only_second, 0.5).pvalue
    assert mcnemar_exact_p(only_first, only_second) == pytest.approx(expected, rel=1e-9)


def test_compare_counts_only_the_runs_one_method_passes_as_evidence():
    # Same pass shares, opposite pairing: agreeing methods leave no evidence of a difference.
    agreeing = compare([(True, True)] * 8 + [(False, False)] * 2)
    split = compare([(True, False)] * 5 + [(False, True)] * 5)
    assert agreeing["shipped"]["passes"] == 8 and agreeing["mcnemar_p"] == 1.0
    assert (split["only_shipped"], split["only_retrain_again"], split["both_fail"]) == (5, 5, 0)
    lopsided = compare([(False, True)] * 9 + [(True, True)])
    assert lopsided["mcnemar_p"] < 0.01


def _run(parent: float, retrained: float, unlearned: float) -> dict:
    """One quality.py run reduced to the retain figures the parent table reads."""
    return {
        "original": {"retain_acc": parent},
        "retrain": {"retain_acc": retrained},
        "shipped": {"retain_acc": unlearned, "pass": {"retain": unlearned >= retrained - 0.015}},
    }


def test_retain_against_parent_counts_failures_whose_parent_was_already_below_the_bound():
    runs = [
        _run(parent=0.90, retrained=0.94, unlearned=0.90),  # fails; the parent itself is 4 points short
        _run(parent=0.95, retrained=0.95, unlearned=0.92),  # fails; the parent was within the bound
        _run(parent=0.95, retrained=0.95, unlearned=0.95),  # passes
    ]
    row = retain_against_parent(runs)
    assert (row["runs"], row["retain_failures"], row["parent_below_bound"]) == (3, 2, 1)
    assert row["shipped_minus_parent_pts"]["worst"] == pytest.approx(-3.0)
    assert row["shipped_minus_parent_pts"]["mean"] == pytest.approx(-1.0)
    assert row["retrain_minus_parent_pts"]["mean"] == pytest.approx(4 / 3)
