"""params.yaml is validated once, at load: every bad key or value is named."""

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


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.retian_seed: Extra inputs are not permitted"):
        load_params(_with_section(tmp_path, "unknown_key.yaml", None))


def test_fractions_must_sum_to_one(tmp_path):
    with pytest.raises(ConfigError, match="train \\+ val \\+ test must be 1"):
        load_params(_with_section(tmp_path, "bad_fractions.yaml", None))


def test_ill_typed_value_is_named():
    with pytest.raises(ConfigError, match=r"unlearn\.noise\.steps"):
        load_params(ROOT / "params.yaml", ["unlearn.noise.steps=many"])


def test_overrides_apply_change_the_digest_and_reject_unknown_keys():
    base = load_params(ROOT / "params.yaml")
    changed = load_params(ROOT / "params.yaml", ["unlearn.seed=7", "gates.max_mia_gap=0.2"])
    assert changed.unlearn.seed == 7 and changed.gates.max_mia_gap == 0.2
    assert changed.digest() != base.digest()
    with pytest.raises(ConfigError, match="unknown key 'unlearn.sed'"):
        load_params(ROOT / "params.yaml", ["unlearn.sed=1"])
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_params(ROOT / "params.yaml", ["unlearn.seed"])


def test_params_are_frozen():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(Exception, match="frozen"):
        params.unlearn.seed = 3  # type: ignore[misc]


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
