"""params.yaml is validated once, at load: every bad key or value is named."""

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from unsir_pipeline.settings.config import ConfigError, load_params

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).parent / "configs"


def _with_section(tmp_path, name, section):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw.update(yaml.safe_load((CONFIGS / name).read_text()) if section is None else section)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_params_are_valid_and_convert_to_core_configs():
    params = load_params(ROOT / "params.yaml")
    core = params.unsir_config()
    assert core.noise.batch_size == params.data.retain_per_class  # the recipe's noise batch
    assert core.verification.max_rounds == params.unlearn.verification.max_rounds
    assert len(params.digest()) == 16


def test_configured_forget_classes_are_read_as_the_command_line_reads_them():
    """YAML reads `forget_classes: [3]` as a number, the CLI's `unsir forget 3` as text; where
    class names are numbers (an image folder "1", "2", "3"), index 3 and name "3" differ, so
    `dvc repro` and `unsir forget` must take the same reading: the text, a name first."""
    from unsir.classes import resolve_classes

    params = load_params(ROOT / "params.yaml", ["unlearn.forget_classes=[3, cat]"])
    assert params.unlearn.forget_classes == ["3", "cat"]
    assert resolve_classes(params.unlearn.forget_classes[:1], ("1", "2", "3")) == (2,)  # the class named "3"


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.retian_seed: Extra inputs are not permitted"):
        load_params(_with_section(tmp_path, "unknown_key.yaml", None))


def test_fractions_must_sum_to_one(tmp_path):
    with pytest.raises(ConfigError, match="train \\+ val \\+ test must be 1"):
        load_params(_with_section(tmp_path, "bad_fractions.yaml", None))


def test_ill_typed_value_is_named():
    with pytest.raises(ConfigError, match=r"unlearn\.noise\.steps"):
        load_params(ROOT / "params.yaml", ["unlearn.noise.steps=many"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "unlearn.seed=abc",
            "unlearn.seed: Input should be a valid integer, unable to parse string as an integer, got 'abc'",
        ),
        ("gates.max_forget_acc=-0.5", "gates.max_forget_acc: Input should be greater than or equal to 0, got -0.5"),
        ("evaluation.mia_feature=los", "evaluation.mia_feature: Input should be 'entropy' or 'loss', got 'los'"),
        ("gates=3", "gates: Input should be a valid dictionary or instance of GateParams, got 3"),
    ],
)
def test_a_refused_value_is_named_with_its_key(override, message):
    """`--set gates.max_forget_acc=-0.5` said "Input should be greater than or equal to 0" without the
    value: with the key in params.yaml and in a --set flag, which one was refused?"""
    with pytest.raises(ConfigError) as refused:
        load_params(ROOT / "params.yaml", [override])
    assert str(refused.value) == f"invalid params.yaml: {message}"


def test_overrides_apply_change_the_digest_and_reject_unknown_keys():
    base = load_params(ROOT / "params.yaml")
    changed = load_params(ROOT / "params.yaml", ["unlearn.seed=7", "gates.max_mia_gap=0.2"])
    assert changed.unlearn.seed == 7 and changed.gates.max_mia_gap == 0.2
    assert changed.digest() != base.digest()
    with pytest.raises(ConfigError, match="unknown key 'unlearn.sed'"):
        load_params(ROOT / "params.yaml", ["unlearn.sed=1"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_params(ROOT / "params.yaml", ["unlearn.seed"])


# The digest of the repository's params.yaml: models registered from it are tagged with it, so a
# change to how parameters are dumped must leave it alone.
SHIPPED_DIGEST = "f7fa1a6290bcb098"


def test_the_shipped_params_keep_their_digest():
    assert load_params(ROOT / "params.yaml").digest() == SHIPPED_DIGEST


@pytest.mark.parametrize("recipe", ["measured", "official"])
@pytest.mark.parametrize("override", ["unlearn.impair.epochs=2", "unlearn.impair={epochs: 2}"])
def test_a_key_given_of_a_recipe_section_keeps_the_recipe_s_other_values(recipe, override):
    """`--set 'unlearn.impair={epochs: 2}'` ran impair at OptimConfig's default rate (1e-3), not the
    recipe's (measured: 2e-3, official: 0.02 at batch 256), and `--set unlearn.impair.epochs=2` was
    refused; both now change the epochs alone."""
    base = load_params(ROOT / "params.yaml", [f"unlearn.recipe={recipe}"])
    params = load_params(ROOT / "params.yaml", [f"unlearn.recipe={recipe}", override])
    assert params.unsir_config().impair == replace(base.unsir_config().impair, epochs=2)
    assert params.unsir_config().repair == base.unsir_config().repair
    # What the user set, no more: the logged parameters and the digest.
    assert params.value("unlearn.impair") == {"epochs": 2} and params.digest() != base.digest()


def test_a_section_in_the_file_changes_only_the_keys_it_gives(tmp_path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["unlearn"].update(noise={"steps": 3}, polish={"lr": 0.0001})
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    recipe = load_params(ROOT / "params.yaml").unsir_config()
    core = load_params(path).unsir_config()
    assert core.noise == replace(recipe.noise, steps=3) and core.polish == replace(recipe.polish, lr=0.0001)
    # A --set key joins the file's section.
    core = load_params(path, ["unlearn.polish.epochs=3"]).unsir_config()
    assert core.polish == replace(recipe.polish, lr=0.0001, epochs=3)


def test_a_phase_the_recipe_leaves_out_takes_the_defaults_for_keys_left_out():
    from unsir.configs import OptimConfig

    params = load_params(ROOT / "params.yaml", ["unlearn.recipe=official", "unlearn.head_round.epochs=5"])
    assert params.unsir_config().head_round == OptimConfig(epochs=5)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "unlearn.impair.epoch=2",
            "override 'unlearn.impair.epoch=2': unknown key 'unlearn.impair.epoch'; expected one of lr, epochs, "
            "batch_size, optimizer, weight_decay, momentum",
        ),
        (
            "unlearn.impair={epoch: 2}",
            "invalid params.yaml: unlearn.impair.epoch: Extra inputs are not permitted; expected one of lr, epochs, "
            "batch_size, optimizer, weight_decay, momentum",
        ),
        ("unlearn.impair.epochs=-1", "invalid params.yaml: unlearn.impair.epochs: must be >= 0, got -1"),
        ("unlearn.repair.lr=-1", "invalid params.yaml: unlearn.repair.lr: must be a finite number > 0, got -1.0"),
        ("unlearn.noise.steps=0", "invalid params.yaml: unlearn.noise.steps: must be > 0, got 0"),
        (
            "unlearn.polish.epochs=many",
            "invalid params.yaml: unlearn.polish.epochs: Input should be a valid integer, unable to parse string as "
            "an integer, got 'many'",
        ),
        ("unlearn.impair.epochs=null", "invalid params.yaml: unlearn.impair.epochs: Input should be a valid integer"),
    ],
)
def test_a_bad_key_or_value_of_a_recipe_section_is_refused_at_load_naming_it(override, message):
    with pytest.raises(ConfigError) as refused:
        load_params(ROOT / "params.yaml", [override])
    assert str(refused.value).startswith(message)


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("requests.schedule=@daily", "found character '@' that cannot start any token"),
        ("data.name=[", "expected the node content, but found '<stream end>'"),
    ],
)
def test_a_set_value_that_is_not_yaml_is_refused_naming_it(override, problem):
    """It escaped as PyYAML's own error, "while scanning for the next token", and the CLI exited 1
    (a pipeline failure) without naming the flag; quoted, the same text is a valid value."""
    with pytest.raises(ConfigError) as refused:
        load_params(ROOT / "params.yaml", [override])
    key, _, value = override.partition("=")
    assert str(refused.value) == (
        f"override {override!r}: the value is not valid YAML ({problem}); "
        f"to give it as text, quote it: --set \"{key}='{value}'\""
    )
    assert load_params(ROOT / "params.yaml", ["requests.schedule='@daily'"]).requests.schedule == "@daily"


def test_a_key_of_a_section_that_is_no_section_is_refused():
    with pytest.raises(ConfigError, match="'nope' is not a section of params.yaml"):
        load_params(ROOT / "params.yaml", ["unlearn.verification.nope.deep=1"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "unlearn.impair={lr: -1, epochs: 1, batch_size: 32}",
            r"unlearn\.impair\.lr: must be a finite number > 0, got -1\.0",
        ),
        ("model.train.weight_decay=-0.1", r"model\.train\.weight_decay: must be a finite number >= 0, got -0\.1"),
        ("model.train.optimizer=rmsprop", r"model\.train\.optimizer: Input should be 'adam' or 'sgd'"),
        ("unlearn.verification.max_rounds=0", r"unlearn\.verification\.max_rounds: must be >= 1, got 0"),
        ("data.fractions.test=0", r"data\.fractions\.test: must be > 0, got 0"),
        # Infinity passes "> 0"; a run at that rate turned every weight into NaN and failed later.
        ("unlearn.repair={lr: .inf, epochs: 1}", r"unlearn\.repair\.lr: must be a finite number > 0, got inf"),
        ("model.train.lr=.inf", r"model\.train\.lr: must be a finite number > 0, got inf"),
        ("model.train.momentum=.inf", r"model\.train\.momentum: must be a finite number >= 0, got inf"),
        ("unlearn.noise={lr: .inf}", r"unlearn\.noise\.lr: must be a finite number > 0, got inf"),
        ("unlearn.noise={l2_weight: .inf}", r"unlearn\.noise\.l2_weight: must be a finite number >= 0, got inf"),
        # An untrained original (test accuracy 0.1) was registered as champion, and every
        # retrained reference would be untrained too; 0 epochs stays valid for unlearning phases.
        ("model.train.epochs=0", r"model\.train\.epochs: must be >= 1 \(the original model .*\), got 0"),
        # Both reached DVC first: bootstrap initialised it and ran the prepare stage, which failed
        # in a subprocess (exit 1, through DVC's 255) with "unknown dataset" or "needs a root".
        ("data.name=cifar", r"data\.name: .*unknown data set 'cifar'; expected one of \['digits'"),
        ("data.name=imagefolder", r"data\.name 'imagefolder' is read from a local directory: set data\.root"),
        # A typo for 256 made prepare try to hold terabytes of pixels in memory.
        ("data.image_size=25600", r"data\.image_size: must be at most 1024, .*7\.9 GB per RGB image.*\), got 25600"),
        (
            "unlearn.impair={lr: 0.1, epochs: 1, batch_size: 32, momentun: 0.5}",
            r"unlearn\.impair\.momentun: Extra inputs are not permitted; expected one of lr, epochs, ",
        ),
        # The three below failed only when the train stage built the model, after the data stages.
        ("model.kwargs={widht: 8}", r"model\.kwargs: 'small_cnn' takes no argument 'widht'; it takes: width \(int\)"),
        ("model.kwargs={width: wide}", r"model\.kwargs: 'small_cnn' argument 'width' must be int, got 'wide' \(str\)"),
        ("model.kwargs={in_channels: 3}", r"model\.kwargs: .*\['in_channels'\] of 'small_cnn' come from the data"),
    ],
)
def test_core_config_sections_are_validated_by_the_core_with_the_key_path(override, message):
    with pytest.raises(ConfigError, match=message):
        load_params(ROOT / "params.yaml", [override])


def test_image_size_may_be_as_large_as_its_bound():
    assert load_params(ROOT / "params.yaml", ["data.image_size=1024"]).data.image_size == 1024


def test_an_unlearning_phase_may_have_zero_epochs():
    params = load_params(ROOT / "params.yaml", ["unlearn.polish={lr: 0.0002, epochs: 0, batch_size: 32}"])
    assert params.unsir_config().polish.epochs == 0


def test_core_config_sections_load_as_the_core_dataclasses():
    from unsir.configs import NoiseConfig, OptimConfig

    params = load_params(
        ROOT / "params.yaml",
        [
            "unlearn.impair={lr: 0.05, epochs: 2, batch_size: 8, optimizer: sgd}",
            "unlearn.noise={batch_size: 4, steps: 3, lr: 0.2, l2_weight: 0.0, l2_reduction: pixel_sum}",
            "model.train.momentum=0.5",
        ],
    )
    core = params.unsir_config()
    assert core.impair == OptimConfig(lr=0.05, epochs=2, batch_size=8, optimizer="sgd")
    assert core.noise == NoiseConfig(batch_size=4, steps=3, lr=0.2, l2_weight=0.0, l2_reduction="pixel_sum")
    assert params.model.train.momentum == 0.5


def test_momentum_is_a_parameter_like_any_other():
    base = load_params(ROOT / "params.yaml")
    assert base.model_dump()["model"]["train"]["momentum"] == 0.9  # logged with the parameters
    assert load_params(ROOT / "params.yaml", ["model.train.momentum=0.5"]).digest() != base.digest()


def test_params_are_frozen():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(Exception, match="frozen"):
        params.unlearn.seed = 3  # type: ignore[misc]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data:\n  name: digits\n  seeds: [1, 2\nmodel: {}\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 4, column 6: ") as refused:
        load_params(bad)
    assert len(str(refused.value).splitlines()) == 1  # the CLI shows one line: where it is, in it
    bad.write_bytes(b"data:\n  name: d\xe9gits\n")
    with pytest.raises(ConfigError, match=r"params.yaml is not UTF-8 text \(byte 0xe9 at 15\)"):
        load_params(bad)


@pytest.mark.parametrize(
    ("text", "got"),
    [("", "nothing"), ("# all commented out\n", "nothing"), ("- data\n", "a list"), ("digits\n", "'digits'")],
)
def test_a_file_without_sections_says_what_it_holds(tmp_path, text, got):
    """An empty params.yaml was refused as "must hold a mapping of sections, got NoneType"."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as refused:
        load_params(path)
    assert str(refused.value) == (
        f"{path} holds {got}; expected a mapping with the keys data, model, unlearn, evaluation, gates, registry, "
        "requests, state, paths, device (see docs/configuration.md)"
    )


def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path):
    """A second `split_seed:` in data, or a second `gates:` section pasted at the end, loaded
    silently with the last one winning: the first, the one a reader sees, was ignored."""
    text = (ROOT / "params.yaml").read_text()
    twice = tmp_path / "params.yaml"
    twice.write_text(text.replace("  split_seed: 0\n", "  split_seed: 0\n  split_seed: 1\n", 1))
    line = text.splitlines().index("  split_seed: 0") + 1
    with pytest.raises(ConfigError) as refused:
        load_params(twice)
    assert str(refused.value) == (
        f"{twice} is not valid YAML at line {line + 1}, column 3: duplicate key 'split_seed' (first at line {line})"
    )
    twice.write_text(text + "gates: {max_forget_acc: 0.5, max_retain_drop: 0.5}\n")
    with pytest.raises(ConfigError, match="duplicate key 'gates'"):
        load_params(twice)
    with pytest.raises(ConfigError, match=r"override 'gates=\{a: 1, a: 2\}': the value is not valid YAML \(duplicate"):
        load_params(ROOT / "params.yaml", ["gates={a: 1, a: 2}"])
    # A merge key's values may be overridden: that is what it is for.
    merged = tmp_path / "merged.yaml"
    merged.write_text(text.replace("  split_seed: 0\n", "  <<: {split_seed: 5}\n  split_seed: 0\n", 1))
    assert load_params(merged).data.split_seed == 0


# --- state.database_url: where requests and the audit trail live ---------------------------


def test_state_database_url_from_the_environment_stays_out_of_the_digest(monkeypatch):
    base = load_params(ROOT / "params.yaml")
    assert base.state.database_url is None  # embedded SQLite files by default
    monkeypatch.setenv("UNSIR_STATE_DATABASE_URL", "postgresql://unsir:s3cret@db.example:5432/unsir_state")
    shared = load_params(ROOT / "params.yaml")
    assert shared.state.database_url == "postgresql://unsir:s3cret@db.example:5432/unsir_state"
    # Deployment, not model: the digest and the parameters logged to MLflow never carry it.
    assert shared.digest() == base.digest() and "state" not in shared.model_dump()
    assert "s3cret" not in repr(shared)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://unsir:s3cret@db/state", r"'mysql://unsir:\*\*\*@db/state' names 'mysql'; expected postgresql://"),
        ("postgresql://unsir:s3cret@db", r"lacks a host or a database name"),
        ("postgresql+asyncpg://unsir:s3cret@db/state", r"names 'postgresql\+asyncpg'"),
        ("sqlite:///relative.db", r"must name an absolute file path"),
        ("db.example:5432", r"is not a URL"),
    ],
)
def test_bad_state_database_url_is_named_without_its_password(url, message):
    with pytest.raises(ConfigError, match=r"state\.database_url: .*" + message) as refused:
        load_params(ROOT / "params.yaml", [f"state.database_url={url}"])
    assert "s3cret" not in str(refused.value)


def test_unreachable_state_database_is_named_without_its_password(tmp_path):
    import socket

    from unsir_pipeline.adapters.state_store import StateError
    from unsir_pipeline.governance.deletion_requests import RequestStore

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(
        StateError,
        match=rf"cannot open the state database postgresql\+psycopg2://unsir:\*\*\*@127\.0\.0\.1:{port}/state: "
        r".*refused.*expected a running PostgreSQL",
    ) as refused:
        RequestStore(f"postgresql://unsir:s3cret@127.0.0.1:{port}/state")
    assert "s3cret" not in str(refused.value)


def test_shared_state_without_a_prefect_server_refuses_the_batch_lock(tmp_path):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from unsir_pipeline.governance.locks import BatchLockError, deletion_batch_lock
    from unsir_pipeline.settings.workspace import Workspace

    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    ws = Workspace.load(tmp_path, ["state.database_url=postgresql://unsir:pw@127.0.0.1:1/state"])
    refused = pytest.raises(BatchLockError, match="set PREFECT_API_URL")
    with temporary_settings(updates={PREFECT_API_URL: None}), refused, deletion_batch_lock(ws):
        pass
    embedded = Workspace.load(tmp_path)  # embedded state: the file lock, no server needed
    with temporary_settings(updates={PREFECT_API_URL: None}), deletion_batch_lock(embedded) as held:
        assert held


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.seed=true", "an integer"),
        ("model.train.epochs=true", "an integer"),
        ("data.retain_per_class=yes", "an integer"),
        ("unlearn.seed=false", "an integer"),
        ("unlearn.noise_copies=on", "an integer"),
        ("unlearn.impair.epochs=true", "an integer"),
        ("unlearn.verification.max_rounds=true", "an integer"),
        ("gates.max_retain_drop=true", "a number"),
        ("model.train.lr=false", "a number"),
        ("unlearn.frozen_lower_layers=false", "a number"),
    ],
)
def test_a_boolean_where_a_number_is_expected_is_refused_naming_key_and_value(override, expected):
    """Pydantic's lax mode read `seed: true` as 1 and `lr: false` as 0.0: a YAML slip (`on`, `yes`)
    trained or unlearned with a number nobody wrote."""
    key, _, value = override.partition("=")
    with pytest.raises(ConfigError) as refused:
        load_params(ROOT / "params.yaml", [override])
    boolean = str(yaml.safe_load(value)).lower()
    assert str(refused.value) == (
        f"invalid params.yaml: {key}: expected {expected}, got the boolean {boolean} "
        "(YAML reads true, false, yes, no, on and off as booleans)"
    )


def test_a_boolean_number_in_the_file_stops_the_command_with_exit_2(tmp_path, capsys):
    from unsir_pipeline.cli import main

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["model"]["seed"] = True
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    assert main(["--project", str(tmp_path), "request", "list"]) == 2
    assert "model.seed: expected an integer, got the boolean true (YAML reads" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["data.split_seed", "data.retain_seed", "model.seed", "unlearn.seed"])
@pytest.mark.parametrize(
    ("value", "message"), [("-1", "greater than or equal to 0"), ("4294967296", "less than or equal to 4294967295")]
)
def test_a_seed_numpy_cannot_take_is_refused_at_load(key, value, message):
    """`--set unlearn.seed=99999999999999999999` loaded, and `unsir forget` started Prefect's server
    and the flow, which failed in its unlearn task on torch's "Overflow when unpacking long long"
    (exit 1); model.seed reached torch and NumPy (taken modulo 2**32) likewise."""
    with pytest.raises(ConfigError, match=f"{key}: Input should be {message}"):
        load_params(ROOT / "params.yaml", [f"{key}={value}"])


@pytest.mark.parametrize("schedule", ["0 25 * * *", "every night", "0 2 * *", "H 2 * * *"])
def test_a_schedule_prefect_cannot_parse_is_refused_at_load(schedule):
    """`requests.schedule: "0 25 * * *"` loaded; only `unsir batch serve`, handing it to Prefect,
    found it (and no other command ever did)."""
    with pytest.raises(ConfigError) as refused:
        load_params(ROOT / "params.yaml", [f"requests.schedule='{schedule}'"])
    assert f"requests.schedule: Value error, {schedule!r} is not a cron expression" in str(refused.value)
    assert "expected five fields: minute hour day-of-month month day-of-week" in str(refused.value)


def loads(override: str) -> bool:
    """Whether params.yaml with ``override`` loads (a ConfigError: it does not)."""
    try:
        load_params(ROOT / "params.yaml", [override])
    except ConfigError:
        return False
    return True


@pytest.mark.parametrize(
    "schedule", ["0 2 * * *", "*/15 * * * *", "0 2 * * mon-fri", "0 2 L * *", "@daily", "0 25 * * *", "0 2 * * 7#1"]
)
def test_the_schedule_is_checked_by_the_parser_prefect_schedules_with(schedule):
    from prefect._internal.schemas.validators import validate_cron_string

    try:
        validate_cron_string(schedule)
        prefect_accepts = True
    except ValueError:
        prefect_accepts = False
    assert loads(f"requests.schedule='{schedule}'") == prefect_accepts


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "registry.challenger_alias='x y'",
            "registry.challenger_alias: Value error, alias 'x y' is not one MLflow takes; expected letters, digits, "
            "'_' and '-' (e.g. challenger)",
        ),
        (
            "registry.champion_alias=latest",
            "registry.champion_alias: Value error, alias 'latest' is reserved by MLflow",
        ),
        ("registry.champion_alias=v2", "registry.champion_alias: Value error, alias 'v2' is reserved by MLflow"),
        (
            "registry.challenger_alias=champion",
            "registry: Value error, champion_alias and challenger_alias are both 'champion'; expected two "
            "different aliases (a new version is registered as the challenger)",
        ),
        (
            "registry.champion_alias=original",
            "registry.champion_alias: Value error, alias 'original' is the one bootstrap gives the first model",
        ),
        ("registry.model_name='a/b'", "registry.model_name: Value error, model name 'a/b' is not one MLflow takes"),
    ],
)
def test_a_registry_name_mlflow_refuses_or_two_roles_sharing_an_alias_are_refused_at_load(override, message):
    """`--set registry.challenger_alias='x y'` loaded; `unsir forget` trained, evaluated and registered
    version 5 before MLflow refused to point the alias at it (exit 1). Champion and challenger as one
    alias would make every new version, held or not, the champion."""
    with pytest.raises(ConfigError) as refused:
        load_params(ROOT / "params.yaml", [override])
    assert str(refused.value).startswith(f"invalid params.yaml: {message}")


@pytest.mark.parametrize("alias", ["challenger", "next-2", "näxt", "v", "v2x", "V10", "Latest", "a.b", "x" * 256])
def test_an_alias_is_checked_as_mlflow_checks_it(alias):
    from mlflow.exceptions import MlflowException
    from mlflow.utils import validation

    # MLflow's own checks, private: named _validate_model_alias_name* up to 3.17, _validate_alias_name* since 3.18.
    check = getattr(validation, "_validate_alias_name", None) or validation._validate_model_alias_name
    reserved = (
        getattr(validation, "_validate_alias_name_reserved", None) or validation._validate_model_alias_name_reserved
    )
    try:
        check(alias)
        reserved(alias)
        mlflow_takes = True
    except MlflowException:
        mlflow_takes = False
    assert loads(f"registry.challenger_alias={alias}") == mlflow_takes


def test_a_tracking_uri_mlflow_has_no_registry_for_is_refused_at_load():
    """`--set registry.tracking_uri=ftp://x` loaded; the first command to open the registry failed
    on MLflow's paragraph (exit 1, a failed pipeline), and `unsir forget` only after it began."""
    with pytest.raises(ConfigError) as refused:
        load_params(ROOT / "params.yaml", ["registry.tracking_uri=ftp://host/x"])
    assert str(refused.value).startswith(
        "invalid params.yaml: registry.tracking_uri: Value error, 'ftp://host/x' is no URI MLflow keeps a model "
        "registry at; expected sqlite:///path (relative to the project), http(s)://server, or another scheme "
        "MLflow's registry takes: "
    )


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:///state/mlflow/mlflow.db",
        "http://127.0.0.1:5000",
        "HTTPS://mlflow.example.com",
        "postgresql+psycopg2://u:p@db/mlflow",
        "mysql://u@db/m",
        "file:///tmp/mlruns",
        "mlruns",
        "databricks",
        "ftp://host/x",
        "s3://bucket/mlruns",
        "htp://typo:5000",
    ],
)
def test_a_tracking_uri_is_checked_as_mlflow_picks_its_registry(uri):
    from mlflow.exceptions import MlflowException
    from mlflow.tracking._model_registry.utils import _get_store_registry

    try:
        _get_store_registry().get_store_builder(uri)
        mlflow_takes = True
    except MlflowException:
        mlflow_takes = False
    assert loads(f"registry.tracking_uri={uri}") == mlflow_takes
