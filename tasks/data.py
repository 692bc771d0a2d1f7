"""Validate the data splits and version the data a run uses."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from tasks.common import workspace
from unsir_pipeline import steps
from unsir_pipeline.validation import require_valid


@task(name="validate-data-splits", cache_policy=NO_CACHE)
def validate_data_splits(project_dir: str, overrides: list[str], requested: list[str], already_forgotten: list[int]) -> dict:
    """Great Expectations over the manifest and the retain subset, plus DVC digests; a failure
    stops the flow before any compute, listing every failed expectation."""
    report, handles = steps.validate_inputs(workspace(project_dir, overrides), requested, already_forgotten)
    create_markdown_artifact(key="data-validation", markdown=report.to_markdown(), description="Great Expectations result")
    require_valid(report)
    handles["expectations_passed"] = report.evaluated
    get_run_logger().info("data valid: %d expectations passed; forgetting %s", report.evaluated, handles["forget_classes"])
    return handles


@task(name="version-data", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def version_data(project_dir: str, overrides: list[str], retain_subset: str) -> dict[str, str]:
    digests = steps.version_data(workspace(project_dir, overrides), retain_subset)
    get_run_logger().info("data versioned with DVC: %s", digests)
    return digests
