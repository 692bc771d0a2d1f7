"""The deployment manifests under infra/: valid for Compose, Kubernetes and Prefect, and safe.

Offline and without Docker: the Compose file is checked against the Compose specification's
JSON schema (vendored by check-jsonschema), the Kubernetes objects against Kubernetes' OpenAPI
schemas (shipped by kubernetes-validate), and the work pool's job template is rendered by
Prefect's and prefect-kubernetes' own code, as a Kubernetes worker renders it for a flow run.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_DIR = ROOT / "infra" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
JOB_TEMPLATE = ROOT / "infra" / "kubernetes" / "base-job-template.json"
SECRET_EXAMPLE = ROOT / "infra" / "kubernetes" / "secret.example.yaml"

# The oldest Kubernetes minor version kubernetes-validate ships schemas for, in strict mode
# (unknown fields are errors, so a misspelt key fails).
KUBERNETES_VERSION = "1.25"

# `$$` is a literal dollar; otherwise `${NAME}`, `${NAME<op><arg>}` or `$NAME` (Compose spec).
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|KEY|AUTH_STRING")
_CREDENTIALS_IN_URL = re.compile(r"://[^/:@\s]+:(?P<password>[^@\s]+)@")


def _strings(node):
    """Every string value in a loaded YAML/JSON document (mapping keys excluded)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


def _interpolations(text: str) -> list[tuple[str, str | None]]:
    """(variable, operator) for each interpolation in ``text``; operator None for `${X}`/`$X`."""
    found = []
    for match in _INTERPOLATION.finditer(text):
        if match["escaped"]:
            continue
        found.append((match["braced"] or match["bare"], match["op"]))
    return found


def _interpolate(node, env: dict[str, str]):
    """``node`` with Compose's interpolation applied from ``env``, as `docker compose` does."""
    if isinstance(node, dict):
        return {key: _interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [_interpolate(item, env) for item in node]
    if not isinstance(node, str):
        return node

    def substitute(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["bare"]
        op, arg = match["op"], match["arg"]
        value = env.get(name)
        is_set = value is not None and (value != "" or not (op or "").startswith(":"))
        if op in ("-", ":-"):
            return value if is_set else arg
        if op in ("?", ":?"):
            if not is_set:
                raise KeyError(f"required variable {name} is not set: {arg}")
            return value
        if op in ("+", ":+"):
            return arg if is_set else ""
        return value or ""

    return _INTERPOLATION.sub(substitute, node)


def _env_example() -> dict[str, str]:
    """The assignments of .env.example (comments and blank lines skipped)."""
    assignments = {}
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name), (
            f".env.example line {number}: expected NAME=value, got {line!r}"
        )
        assignments[name] = value
    return assignments


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def rendered_compose(compose) -> dict:
    """The Compose file as `docker compose --env-file .env.example` sees it."""
    return _interpolate(compose, _env_example())


@pytest.fixture(scope="module")
def compose_validator() -> jsonschema.Draft202012Validator:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


# --- Docker Compose ------------------------------------------------------------------------


def test_compose_file_follows_the_compose_specification(compose, rendered_compose, compose_validator):
    for document in (compose, rendered_compose):
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator.iter_errors(document)
        ]
        assert not errors, errors


def test_compose_schema_check_catches_a_misspelt_key(compose, compose_validator):
    # Guards the test above: the schema must reject what Compose itself rejects.
    broken = copy.deepcopy(compose)
    broken["services"]["mlflow"]["healthchek"] = broken["services"]["mlflow"].pop("healthcheck")
    assert not compose_validator.is_valid(broken)


def test_the_pipeline_services_are_all_there(compose):
    assert {"postgres", "minio", "minio-init", "mlflow", "prefect-server", "worker", "worker-gpu"} <= set(
        compose["services"]
    )


def test_every_dependency_waits_for_a_condition(compose):
    services = compose["services"]
    for name, service in services.items():
        for target, dependency in service.get("depends_on", {}).items():
            assert isinstance(dependency, dict), f"{name} depends on {target} without a condition"
            condition = dependency.get("condition")
            assert target in services, f"{name} depends on unknown service {target}"
            if condition == "service_healthy":
                assert "healthcheck" in services[target], (
                    f"{name} waits for {target} to be healthy, but {target} has no healthcheck"
                )
            elif condition == "service_completed_successfully":
                assert services[target].get("restart") == "no", (
                    f"{name} waits for {target} to complete, but {target} is restarted"
                )
            else:
                pytest.fail(f"{name} depends on {target} with condition {condition!r}")


def test_every_one_shot_service_is_awaited_by_a_service_that_stays_up(compose):
    # `up --wait` counts a one-shot's exit as a failure unless such a service adopts it.
    services = compose["services"]
    for name, service in services.items():
        if service.get("restart") != "no":
            continue
        adopters = [
            other
            for other, spec in services.items()
            if spec.get("restart") != "no"
            and "profiles" not in spec
            and spec.get("depends_on", {}).get(name, {}).get("condition") == "service_completed_successfully"
        ]
        assert adopters, f"one-shot {name} is awaited by no service that stays up"


def test_every_long_running_service_has_a_healthcheck(compose):
    for name, service in compose["services"].items():
        if service.get("restart") == "no":
            continue  # a one-shot job: its exit code is its health
        test = service.get("healthcheck", {}).get("test")
        assert test and test != ["NONE"], f"{name} runs for good but has no healthcheck"


def test_no_secret_is_written_in_the_compose_file(compose):
    checked = 0
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        assert isinstance(environment, dict), f"{name}: write environment as a mapping"
        for key, value in environment.items():
            value = str(value)
            if _SECRET_NAME.search(key):
                checked += 1
                match = _INTERPOLATION.fullmatch(value)
                assert match and match["braced"] and match["op"] in ("?", ":?"), (
                    f"{name}.{key} must be a required variable, `${{VAR:?message}}`, not {value!r}"
                )
            for url in _CREDENTIALS_IN_URL.finditer(value):
                assert _INTERPOLATION.fullmatch(url["password"]), (
                    f"{name}.{key} writes a password into its URL: {value!r}"
                )
    assert checked >= 10  # the check ran over the stack's secrets, not over nothing


def test_env_example_lists_exactly_the_variables_compose_reads(compose):
    used = [pair for text in _strings(compose) for pair in _interpolations(text)]
    required = {name for name, op in used if op in (None, "?", ":?")}
    example = _env_example()
    assert required - example.keys() == set(), "required but missing from .env.example"
    assert example.keys() - {name for name, _ in used} == set(), "in .env.example but unused"


def test_env_example_holds_placeholders_only(compose):
    used = [pair for text in _strings(compose) for pair in _interpolations(text)]
    required = {name for name, op in used if op in (None, "?", ":?")}
    for name, value in _env_example().items():
        if _SECRET_NAME.search(name):
            assert "change-me" in value, f".env.example: {name} must be a placeholder"
    for text in _strings(compose):
        for match in _INTERPOLATION.finditer(text):
            # A default for a secret would be a secret in the repository.
            if match["braced"] and _SECRET_NAME.search(match["braced"]):
                assert match["braced"] in required, f"{match['braced']} has a default"


def test_published_ports_listen_on_localhost_only(rendered_compose):
    published = 0
    for name, service in rendered_compose["services"].items():
        for port in service.get("ports", []):
            published += 1
            if isinstance(port, dict):
                host_ip = port.get("host_ip")
            else:
                parts = str(port).split(":")
                host_ip = parts[0] if len(parts) == 3 else None
            assert host_ip == "127.0.0.1", f"{name} publishes {port!r} on every interface"
    assert published >= 4  # MLflow, Prefect, MinIO's API and console


def test_gpu_worker_is_the_worker_with_one_nvidia_gpu(compose):
    worker, gpu_worker = compose["services"]["worker"], compose["services"]["worker-gpu"]
    assert gpu_worker["profiles"] == ["gpu"]
    assert "profiles" not in worker
    devices = gpu_worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    for key in ("build", "command", "environment", "depends_on", "volumes"):
        assert gpu_worker[key] == worker[key], f"worker-gpu differs from worker in {key}"


def test_worker_reaches_the_services_by_their_compose_names(rendered_compose):
    services = rendered_compose["services"]
    environment = services["worker"]["environment"]
    assert environment["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert environment["UNSIR_DVC_REMOTE_ENDPOINT"] == "http://minio:9000"
    assert environment["UNSIR_PROJECT_DIR"] == "/app"
    # The DVC remote is in the bucket that minio-init creates.
    bucket = services["minio-init"]["environment"]["DVC_BUCKET"]
    assert environment["UNSIR_DVC_REMOTE"].startswith(f"s3://{bucket}/")
    assert services["mlflow"]["environment"]["MLFLOW_ARTIFACTS_DESTINATION"] == (
        f"s3://{services['minio-init']['environment']['MLFLOW_BUCKET']}"
    )
    assert "--pool" in services["worker"]["command"]
    assert services["worker"]["command"][services["worker"]["command"].index("--pool") + 1] == ("unsir-pool")


def test_files_the_compose_file_names_exist(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_DIR / source).is_file(), f"{name} mounts missing {source}"


# --- Kubernetes work pool -------------------------------------------------------------------


@pytest.fixture(scope="module")
def job_template() -> dict:
    return json.loads(JOB_TEMPLATE.read_text())


def _render_job(template: dict, values: dict) -> dict:
    """The Job a Kubernetes worker submits for a flow run, from the pool's template.

    This is BaseJobConfiguration.from_template_and_values without its block and variable
    lookups (which need a Prefect API), then the worker's own preparation for a flow run.
    """
    from prefect.client.schemas.objects import FlowRun
    from prefect.utilities.templating import apply_values
    from prefect.workers.base import BaseJobConfiguration
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    variables = BaseJobConfiguration._get_base_config_defaults(template["variables"]["properties"])
    variables.update(values)
    rendered = apply_values(copy.deepcopy(template["job_configuration"]), variables)
    configuration = KubernetesWorkerJobConfiguration(**rendered)
    flow_run = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="patient-otter")
    configuration.prepare_for_flow_run(flow_run)
    return configuration.job_manifest


def _validate_job(manifest: dict) -> None:
    # prefect-kubernetes insists on `parallelism` and `completions` in the pod spec as well as
    # the Job's; Kubernetes drops them there. Everything else must be strictly valid.
    manifest = copy.deepcopy(manifest)
    pod_spec = manifest["spec"]["template"]["spec"]
    assert (pod_spec.pop("parallelism"), pod_spec.pop("completions")) == (1, 1)
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_job_template_passes_prefects_validation(job_template):
    from prefect.server.schemas.actions import WorkPoolCreate
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    WorkPoolCreate(name="unsir-gpu", type="kubernetes", base_job_template=job_template)  # raises if invalid
    # The same validator refuses the template once a variable it uses is no longer declared.
    undeclared = copy.deepcopy(job_template)
    del undeclared["variables"]["properties"]["gpu_count"]
    with pytest.raises(ValueError, match=r"undeclared variable\(s\): gpu_count"):
        WorkPoolCreate(name="unsir-gpu", type="kubernetes", base_job_template=undeclared)
    # Every key of the job configuration is a setting the Kubernetes worker reads.
    assert set(job_template["job_configuration"]) <= set(KubernetesWorkerJobConfiguration.model_fields)


def test_job_template_uses_every_variable_it_declares(job_template):
    from prefect.utilities.templating import find_placeholders

    placeholders = {p.name for p in find_placeholders(json.dumps(job_template["job_configuration"]))}
    assert placeholders == set(job_template["variables"]["properties"])


def test_job_template_variables_are_a_json_schema_their_defaults_satisfy(job_template):
    schema = job_template["variables"]
    jsonschema.Draft202012Validator.check_schema(schema)
    defaults = {name: spec["default"] for name, spec in schema["properties"].items() if "default" in spec}
    jsonschema.Draft202012Validator(schema).validate(defaults)
    assert schema["properties"]["gpu_count"]["default"] == 1


def test_default_job_is_a_valid_kubernetes_job_on_one_gpu(job_template):
    manifest = _render_job(job_template, {})
    _validate_job(manifest)

    spec = manifest["spec"]
    assert spec["backoffLimit"] == 0  # Prefect retries a run, not Kubernetes
    assert spec["ttlSecondsAfterFinished"] == 86400
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (pod["tolerations"])
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["envFrom"] == [{"secretRef": {"name": "unsir-credentials"}}]
    assert {"name": "UNSIR_PROJECT_DIR", "value": "/app"} in container["env"]
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert manifest["metadata"]["namespace"] == "unsir"


def test_deployment_job_variables_reach_the_job(job_template):
    manifest = _render_job(
        job_template,
        {
            "gpu_count": 2,
            "image": "registry.example.com/unsir-worker:0.1.0",
            "namespace": "ml",
            "credentials_secret": "unsir-credentials-ml",
            "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "tolerations": [],
            "memory_limit": "32Gi",
        },
    )
    _validate_job(manifest)
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {"memory": "32Gi", "nvidia.com/gpu": 2}
    assert container["image"] == "registry.example.com/unsir-worker:0.1.0"
    assert container["envFrom"] == [{"secretRef": {"name": "unsir-credentials-ml"}}]
    assert manifest["metadata"]["namespace"] == "ml"
    assert manifest["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}


def test_kubernetes_validation_catches_a_misspelt_key(job_template):
    # Guards the two tests above: strict validation must reject an unknown field.
    manifest = _render_job(job_template, {})
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["resource"] = container.pop("resources")
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_job(manifest)


def test_secret_example_is_a_secret_of_placeholders_for_the_pool(job_template):
    secret = yaml.safe_load(SECRET_EXAMPLE.read_text())
    kubernetes_validate.validate(secret, KUBERNETES_VERSION, strict=True)
    assert secret["kind"] == "Secret"
    defaults = job_template["variables"]["properties"]
    assert secret["metadata"]["name"] == defaults["credentials_secret"]["default"]
    assert secret["metadata"]["namespace"] == defaults["namespace"]["default"]

    data = secret["stringData"]
    assert {
        "MLFLOW_TRACKING_URI",
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "PREFECT_API_AUTH_STRING",
        "UNSIR_DVC_REMOTE",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    } <= data.keys()
    for key, value in data.items():
        if _SECRET_NAME.search(key) or key.endswith("USERNAME"):
            assert "change-me" in value, f"secret.example.yaml: {key} must be a placeholder"


def test_the_deployments_schedule_is_params_yamls(tmp_path, monkeypatch):
    """prefect.yaml hard-coded cron "0 2 * * *" beside a comment asking to keep it in step with
    params.yaml's requests.schedule, which `unsir batch serve` uses: a schedule changed in
    params.yaml alone left the deployed batch on the old one. `prefect deploy` now takes it from
    params.yaml, through prefect.yaml's build step; run here as Prefect runs it (run_steps, less
    its look-ups of blocks and variables on a server) and templated with Prefect's own code."""
    from prefect.utilities.importtools import import_object
    from prefect.utilities.templating import apply_values

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["requests"]["schedule"] = "30 3 * * 1"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)  # `prefect deploy` runs in the project directory
    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())

    outputs: dict = {}
    for step in project.get("build") or []:
        ((function, inputs),) = step.items()
        inputs = dict(inputs)
        step_id = inputs.pop("id")
        output = import_object(function)(**inputs)
        outputs.update({**output, step_id: output})
    (deployment,) = project["deployments"]
    (schedule,) = apply_values(deployment["schedules"], outputs)  # as `prefect deploy` fills them

    assert (schedule["cron"], schedule["timezone"]) == ("30 3 * * 1", "UTC")
