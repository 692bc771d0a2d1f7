"""Pipeline configuration: ``params.yaml`` read once into frozen, validated models.

The core's config dataclasses (``OptimConfig``, ``NoiseConfig``, ``VerificationConfig``,
``SplitFractions``) are the schema of their sections: pydantic validates them directly, their
``__post_init__`` holds the bounds. The sections that change the recipe's settings
(``unlearn.impair``, ``unlearn.noise``, ...) hold only the keys given, typed as the dataclass
types them; put onto the recipe's section, the dataclass checks the bounds, once, at load.
Unknown keys and ill-typed values are rejected at load with the offending key path. Command
line overrides (``key.path=value``, values parsed as YAML) are applied before validation and
recorded, so a run's parameters and their hash say exactly what it ran with.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import re
import types
import typing
import urllib.parse
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    create_model,
    field_validator,
    model_serializer,
    model_validator,
)

from unsir.configs import (
    ARCHITECTURE_NAMES,
    DATASET_NAMES,
    DATASETS_FROM_ROOT,
    MAX_SEED,
    NoiseConfig,
    OptimConfig,
    SplitFractions,
    UNSIRConfig,
    VerificationConfig,
    check_architecture_kwargs,
)
from unsir.errors import ConfigValueError, UnlearningInputError
from unsir.recipes import OFFICIAL, unsir_config_for
from unsir_pipeline.settings.database_url import DatabaseURLError, parse_database_url

if TYPE_CHECKING:  # the measures import torch; the CLI checks a request without it
    from unsir.measures import EvaluationConfig


class ConfigError(ValueError):
    """params.yaml or an override is invalid; the message names the key and the problem."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# data.image_size's bound: prepare holds the whole data set in memory as float32 pixels, and
# this tool's classifiers are CIFAR- to ImageNet-scale (32 to 224 pixels); a typo (25600 for
# 256) would otherwise try to allocate terabytes.
MAX_IMAGE_SIZE = 1024


class DataParams(Frozen):
    name: str = Field(description="digits, cifar10, cifar100, mnist, fashionmnist, svhn or imagefolder")
    root: str | None = None
    image_size: int | None = Field(default=None, gt=0)
    split_seed: int = Field(default=0, ge=0, le=MAX_SEED)
    fractions: SplitFractions
    retain_per_class: int = Field(gt=0)
    retain_seed: int = Field(default=0, ge=0, le=MAX_SEED)
    min_per_class: int = Field(default=1, ge=1, description="validation: samples of each class in each split")

    @field_validator("name")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name.lower() not in DATASET_NAMES:
            raise ValueError(f"unknown data set {name!r}; expected one of {list(DATASET_NAMES)}")
        return name

    @model_validator(mode="after")
    def _image_size_that_fits(self) -> DataParams:
        if self.image_size is not None and self.image_size > MAX_IMAGE_SIZE:
            gigabytes = 3 * self.image_size**2 * 4 / 1e9  # one float32 RGB image
            raise ConfigValueError(
                "image_size",
                f"at most {MAX_IMAGE_SIZE}, a square size in pixels such as 32 or 224 (the data set is held in "
                f"memory as float32 pixels: {gigabytes:.1f} GB per RGB image at this size)",
                self.image_size,
            )
        return self

    @model_validator(mode="after")
    def _root_when_read_from_one(self) -> DataParams:
        # Said at load, before DVC or any stage starts; whether the root holds the data is the
        # loader's to say, when it reads it.
        if self.name.lower() in DATASETS_FROM_ROOT and not self.root:
            raise ValueError(
                f"data.name {self.name!r} is read from a local directory: set data.root (an image folder "
                "root/<class>/<image>, or the directory holding torchvision's files)"
            )
        return self


class ModelParams(Frozen):
    arch: str = Field(description="a name in unsir.configs.ARCHITECTURE_NAMES")
    kwargs: dict = Field(default_factory=dict)
    # Seeds NumPy and torch: torch fails on one past 2**64 only when training starts, after the
    # data stages (or Prefect's server); the data seeds' range holds for both.
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    train: OptimConfig

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        if arch not in ARCHITECTURE_NAMES:
            raise ValueError(f"unknown architecture {arch!r}; expected one of {sorted(ARCHITECTURE_NAMES)}")
        return arch

    @model_validator(mode="after")
    def _kwargs_the_builder_takes(self) -> ModelParams:
        # Said at load: the train stage builds the model only after the data stages have run.
        try:
            check_architecture_kwargs(self.arch, self.kwargs)
        except UnlearningInputError as err:
            raise ValueError(f"model.kwargs: {err}") from err
        return self

    @field_validator("train")
    @classmethod
    def _trains(cls, train: OptimConfig) -> OptimConfig:
        # 0 epochs is a phase left out elsewhere (OptimConfig allows it); here it would register an
        # untrained original and judge every forget against an untrained retrained reference.
        if train.epochs < 1:
            raise ConfigValueError(
                "epochs", ">= 1 (the original model and the retrained reference train this long)", train.epochs
            )
        return train


Section = TypeVar("Section", OptimConfig, NoiseConfig)


class SectionChanges(Frozen):
    """The keys a user gave of one of the recipe's sections (``unlearn.impair: {epochs: 2}``),
    each typed as the core dataclass types it; the keys left out stay the recipe's. Only the
    keys given are dumped: the digest and the logged parameters say what the user set."""

    @model_serializer(mode="wrap")
    def _given_only(self, dump: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in dump(self).items() if key in self.model_fields_set}

    def onto(self, section: Section) -> Section:
        """``section`` with the keys given changed; the dataclass checks its bounds."""
        return replace(section, **{key: getattr(self, key) for key in self.model_fields_set})


def changes_to(config: type) -> type[SectionChanges]:
    """The changes a user may give to a section of type ``config``: its fields, each optional."""
    hints = typing.get_type_hints(config)
    changes = {field.name: (hints[field.name], None) for field in fields(config)}
    return create_model(f"{config.__name__}Changes", __base__=SectionChanges, **changes)  # type: ignore[call-overload]


# Named as create_model names them, so that pickle finds them.
if TYPE_CHECKING:  # a class built at run time is no type to mypy; its instances are SectionChanges
    OptimConfigChanges = SectionChanges
    NoiseConfigChanges = SectionChanges
else:
    OptimConfigChanges = changes_to(OptimConfig)
    NoiseConfigChanges = changes_to(NoiseConfig)


# UnlearnParams keys added after model versions were tagged with the params' digest.
KEYS_ADDED_LATER = ("frozen_lower_layers",)


class UnlearnParams(Frozen):
    forget_classes: list[str] = Field(
        min_length=1,
        description="default for `dvc repro`; the CLI overrides it. Read as the CLI reads its arguments: a class "
        "name first, else an index",
    )
    seed: int = Field(default=0, ge=0, le=MAX_SEED, description="seeds torch, as model.seed does")
    recipe: Literal["measured", "measured_with_noise", "official"] = Field(
        default="measured",
        description="measured: derived from model.arch and data.retain_per_class, verified rounds without the "
        "noise (measured better, unsir/recipes.py); measured_with_noise: the same with the paper's "
        "error-maximising noise; official: the paper's notebook settings",
    )
    # Explicit settings win over the recipe's; leave them out to use the recipe. A section given
    # changes the keys it gives: the others stay the recipe's.
    noise: NoiseConfigChanges | None = None
    noise_copies: int | None = Field(default=None, ge=0)
    impair: OptimConfigChanges | None = None
    repair: OptimConfigChanges | None = None
    polish: OptimConfigChanges | None = None
    head_round: OptimConfigChanges | None = Field(
        default=None,
        description="after a round that forgot on accuracy but not on confidence: refit the head alone "
        "on D_r_sub's features with these settings (the measured recipe sets it; with a recipe that "
        "does not, the keys left out take OptimConfig's defaults)",
    )
    reset_forget_rows: bool | None = Field(
        default=None, description="re-draw the forget classes' head rows before round 1 (the measured recipe does)"
    )
    frozen_lower_layers: float | None = Field(
        default=None,
        ge=0,
        lt=1,
        description="the share of the weight layers, from the input, that every step leaves as the original "
        "learned them (the measured recipe's choice per architecture family; 0: every layer trains)",
    )
    # When forgetting counts as done on the validation split (unsir.verification).
    verification: VerificationConfig = VerificationConfig()

    @model_serializer(mode="wrap")
    def _newer_keys_only_when_given(self, dump: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A key added after versions were tagged with the digest is dumped only when given, so
        # params that leave it out keep the digest they had before it existed.
        dumped = dump(self)
        return {key: value for key, value in dumped.items() if key not in KEYS_ADDED_LATER or value is not None}

    @field_validator("forget_classes", mode="before")
    @classmethod
    def _as_text(cls, classes: object) -> object:
        # YAML reads `[3]` as a number; `unsir forget 3` gets text. Both must name the same class
        # (an image folder's class "3" may sit at index 2), so a number is read as its text.
        if isinstance(classes, list):
            return [str(c) if isinstance(c, int) and not isinstance(c, bool) else c for c in classes]
        return classes


class EvaluationParams(Frozen):
    mia_feature: Literal["entropy", "loss"] = "entropy"
    relearn: bool = Field(default=True, description="relearn time of the unlearned (and retrained) model: anamnesis")
    retrain_reference: bool = Field(
        default=False, description="also retrain from scratch on the retain classes and report it side by side"
    )

    def core_config(self) -> EvaluationConfig:
        """The measures' settings (``unsir.measures``) these parameters ask for: the one place the
        flow's evaluation and the DVC stage's read them, so neither leaves a setting unread."""
        from unsir.measures import EvaluationConfig  # torch: only the steps that measure load it

        return EvaluationConfig(mia_feature=self.mia_feature, relearn=self.relearn)


class GateParams(Frozen):
    """Promotion gate: a challenger becomes champion only when every bound holds."""

    max_forget_acc: float = Field(
        ge=0,
        le=1,
        description="test accuracy of every class forgotten so far, and of every class a promoted version forgot",
    )
    max_retain_drop: float = Field(ge=0, le=1, description="original retain acc minus unlearned, test split")
    max_retain_gap: float = Field(
        default=0.015,
        ge=0,
        le=1,
        description="retrained retain acc minus unlearned (with evaluation.retrain_reference)",
    )
    max_mia_gap: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="|MIA - retrained MIA|; without a reference, |MIA - the attack's rate on forget-class validation "
        "samples|, allowed two standard errors more",
    )
    require_verified: bool = Field(default=True, description="hold a version whose validation check failed")
    fallback_to_retrained: bool = Field(
        default=True,
        description="when UNSIR's model fails the gate, register the retrained reference (exact unlearning) in its "
        "place if that passes",
    )
    retrain_when_held: bool = Field(
        default=True,
        description="without evaluation.retrain_reference: train the reference only when UNSIR's model fails the "
        "gate, for the fallback (one retraining, paid only on a miss)",
    )


# The alias bootstrap gives the first model: `unsir forget --from original` starts from it.
ORIGINAL_ALIAS = "original"
# MLflow's rules (mlflow.utils.validation), which it applies only when a version is registered or
# an alias set: after the training and evaluation of a bootstrap or a forget.
_MLFLOW_ALIAS = re.compile(r"[\w-]{1,255}")
_MLFLOW_RESERVED_ALIAS = re.compile(r"latest|[vV]\d+", re.IGNORECASE)
# The URI schemes MLflow keeps a model registry at ("": a local path); a database's may name
# its driver (postgresql+psycopg2).
MLFLOW_REGISTRY_SCHEMES = (
    "sqlite",
    "http",
    "https",
    "postgresql",
    "mysql",
    "mssql",
    "file",
    "databricks",
    "databricks-uc",
    "uc",
    "",
)


class RegistryParams(Frozen):
    tracking_uri: str = Field(description="sqlite:///... (relative paths are under the project) or http(s)://server")
    model_name: str = Field(min_length=1)
    experiment: str = Field(min_length=1)
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    allow_pickled_module: bool = False
    http_timeout_s: int = Field(default=30, gt=0, description="per request to an MLflow server")
    http_max_retries: int = Field(default=3, ge=0, description="retries on connection errors and 5xx, with backoff")
    http_backoff_factor: int = Field(default=1, ge=0, description="exponential backoff: factor * 2**retry seconds")

    @field_validator("tracking_uri")
    @classmethod
    def _registry_mlflow_keeps(cls, uri: str) -> str:
        scheme = urllib.parse.urlparse(uri).scheme.lower().partition("+")[0]
        if len(scheme) == 1:  # a Windows drive letter: a local path
            scheme = ""
        if scheme not in MLFLOW_REGISTRY_SCHEMES:
            others = ", ".join(scheme for scheme in MLFLOW_REGISTRY_SCHEMES if scheme)
            raise ValueError(
                f"{uri!r} is no URI MLflow keeps a model registry at; expected sqlite:///path (relative to the "
                f"project), http(s)://server, or another scheme MLflow's registry takes: {others}, or a local path"
            )
        return uri

    @field_validator("model_name")
    @classmethod
    def _model_name_mlflow_takes(cls, name: str) -> str:
        if not name.strip() or "/" in name or ":" in name:
            raise ValueError(f"model name {name!r} is not one MLflow takes; expected text without '/' or ':'")
        return name

    @field_validator("champion_alias", "challenger_alias")
    @classmethod
    def _alias_mlflow_takes(cls, alias: str) -> str:
        if not _MLFLOW_ALIAS.fullmatch(alias):
            raise ValueError(
                f"alias {alias!r} is not one MLflow takes; expected letters, digits, '_' and '-' (e.g. challenger)"
            )
        if _MLFLOW_RESERVED_ALIAS.fullmatch(alias):
            raise ValueError(f"alias {alias!r} is reserved by MLflow ('latest', and v<N> for version N)")
        if alias == ORIGINAL_ALIAS:
            raise ValueError(
                f"alias {alias!r} is the one bootstrap gives the first model (`--from original`); expected another"
            )
        return alias

    @model_validator(mode="after")
    def _two_aliases(self) -> RegistryParams:
        # One alias for both would make every version registered, held or not, the champion, and
        # rejecting a held one would take the champion's alias away.
        if self.champion_alias == self.challenger_alias:
            raise ValueError(
                f"champion_alias and challenger_alias are both {self.champion_alias!r}; expected two different "
                "aliases (a new version is registered as the challenger)"
            )
        return self


class RequestParams(Frozen):
    """Deletion requests, scheduled batches and the audit trail."""

    store: str = Field(default="state/requests.sqlite", description="SQLite file of deletion requests")
    audit_log: str = Field(default="state/audit.sqlite", description="SQLite file of the hash-chained audit trail")
    max_attempts: int = Field(
        default=3, ge=1, description="a request whose run fails this many batches is failed (setup faults count none)"
    )
    schedule: str = Field(
        default="0 2 * * *", description="cron schedule of `unsir batch serve` and of prefect.yaml's deployment"
    )

    @field_validator("schedule")
    @classmethod
    def _cron_prefect_accepts(cls, schedule: str) -> str:
        # Prefect's own test (validate_cron_string): its croniter parses it, and no field is
        # croniter's random or hashed one (R, H), which Prefect does not support.
        croniter = _prefect_croniter()
        if not croniter.is_valid(schedule) or any(field.upper() in ("R", "H") for field in schedule.split()):
            raise ValueError(
                f"{schedule!r} is not a cron expression; expected five fields: minute hour day-of-month "
                "month day-of-week, e.g. '0 2 * * *' (02:00 every day) or '0 2 * * mon-fri'"
            )
        return schedule


@functools.cache
def _prefect_croniter() -> Any:
    """The cron parser Prefect schedules with (its vendored croniter), without importing Prefect.

    Imported through ``prefect._vendor`` it would import all of Prefect, about a second on every
    command that loads params.yaml; the module itself needs only dateutil and pytz."""
    prefect = importlib.util.find_spec("prefect")
    locations = prefect.submodule_search_locations if prefect else None
    source = Path(locations[0], "_vendor", "croniter", "croniter.py") if locations else None
    spec = importlib.util.spec_from_file_location("_prefect_croniter", source) if source and source.is_file() else None
    if spec is None or spec.loader is None:  # another Prefect layout: the slow, sure way
        from prefect._vendor.croniter import croniter

        return croniter
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.croniter


class StateParams(Frozen):
    """Where deletion requests and the audit trail live (``unsir_pipeline.adapters.state_store``)."""

    database_url: str | None = Field(
        default=None,
        repr=False,  # it may hold a password
        description="none: the SQLite files of `requests` under the project; with shared services, "
        "postgresql://user:password@host:port/database (env UNSIR_STATE_DATABASE_URL)",
    )
    batch_lock: str = Field(
        default="unsir-deletion-batch",
        min_length=1,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="with a database URL and a Prefect server: the global concurrency limit that "
        "lets one deletion batch run at a time (created with limit 1 when missing)",
    )

    @field_validator("database_url")
    @classmethod
    def _valid_url(cls, url: str | None) -> str | None:
        if url is None:
            return None
        try:
            parse_database_url(url)
        except DatabaseURLError as err:
            raise ValueError(str(err)) from None
        return url


class PathParams(Frozen):
    state_dir: str = "state"
    data_dir: str = "data"
    dvc_remote: str = Field(
        default="state/dvc-remote", description="DVC remote: a directory or a URL (s3://bucket/path)"
    )
    dvc_remote_endpoint: str | None = Field(default=None, description="S3-compatible endpoint of the remote (MinIO)")


class Params(Frozen):
    data: DataParams
    model: ModelParams
    unlearn: UnlearnParams
    evaluation: EvaluationParams
    gates: GateParams
    registry: RegistryParams
    requests: RequestParams = RequestParams()
    # Where state lives is the deployment's, not the model's: left out of model_dump(), so out of
    # the digest and of the parameters logged to MLflow (the URL may hold a password).
    state: StateParams = Field(default=StateParams(), exclude=True)
    paths: PathParams
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")

    _unsir_config: UNSIRConfig = PrivateAttr()

    def unsir_config(self) -> UNSIRConfig:
        """The UNSIR settings this configuration runs: the recipe for the model, then overrides."""
        return self._unsir_config

    @model_validator(mode="after")
    def _build_unsir_config(self) -> Params:
        # Built once, at load: a value given to one of the recipe's sections is checked by the
        # dataclass together with the recipe's other values, and refused before any compute.
        unlearn = self.unlearn
        if unlearn.recipe == "official":
            base = OFFICIAL
        else:
            base = unsir_config_for(
                self.model.arch,
                retain_per_class=self.data.retain_per_class,
                with_noise=unlearn.recipe == "measured_with_noise",
            )

        def changed(key: str, section: Section) -> Section:
            changes = getattr(unlearn, key)
            if changes is None:
                return section
            try:
                return changes.onto(section)
            except ConfigValueError as err:
                raise err.within(f"unlearn.{key}") from None

        self._unsir_config = replace(
            base,
            noise=changed("noise", base.noise),
            noise_copies=base.noise_copies if unlearn.noise_copies is None else unlearn.noise_copies,
            impair=changed("impair", base.impair),
            repair=changed("repair", base.repair),
            # A phase the recipe leaves out (official and measured_with_noise have no head round): the
            # keys given start one, the others OptimConfig's defaults.
            polish=base.polish if unlearn.polish is None else changed("polish", base.polish or OptimConfig()),
            head_round=base.head_round
            if unlearn.head_round is None
            else changed("head_round", base.head_round or OptimConfig()),
            reset_forget_rows=base.reset_forget_rows
            if unlearn.reset_forget_rows is None
            else unlearn.reset_forget_rows,
            frozen_lower_layers=base.frozen_lower_layers
            if unlearn.frozen_lower_layers is None
            else unlearn.frozen_lower_layers,
            verification=unlearn.verification,
        )
        return self

    def value(self, key: str) -> object:
        """The value of a dotted key (``data.split_seed``, or a whole section such as ``model``)
        as params.yaml would hold it."""
        node: object = self.model_dump(mode="json")
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown parameter {key!r}")
            node = node[part]
        return node

    def digest(self) -> str:
        """A stable hash of every parameter: tags a model version with what produced it."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last,
    so the first, the one a reader of params.yaml sees, would be ignored without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges keys the mapping may override
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # PyYAML's own error says so below
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first_line[key]})", key_node.start_mark
                )
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds no Python objects


def apply_override(raw: dict, override: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to a nested dict, in place."""
    key, sep, value = override.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {override!r} must look like key.path=value")
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1], start=1):
        if node.get(part) is None and _section_type(parts[:depth]) is not None:
            # A section the file leaves out (state; unlearn.impair, the recipe's): the key goes into a
            # new one, and the keys left out keep what they are without it.
            node[part] = {}
        if not isinstance(node.get(part), dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section of params.yaml")
        node = node[part]
    # A key may be absent from the file when the schema has it (optional settings such as
    # unlearn.noise_copies, which the recipe fills in otherwise).
    if parts[-1] not in node and not _schema_has(parts):
        raise ConfigError(f"override {override!r}: unknown key {key!r}{_expected_keys(parts[:-1])}")
    try:
        node[parts[-1]] = _load_yaml(value)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"override {override!r}: the value is not valid YAML ({_yaml_problem(err)}); "
            f"to give it as text, quote it: --set \"{key}='{value}'\""
        ) from None


def _schema_has(parts: list[str]) -> bool:
    return parts[-1] in _field_annotations(_section_type(parts[:-1]))


def _expected_keys(parts: list[str]) -> str:
    keys = list(_field_annotations(_section_type(parts)))
    return f"; expected one of {', '.join(keys)}" if keys else ""


def _section_type(parts: list[str] | tuple[str, ...]) -> type | None:
    """The model or core dataclass of the section at ``parts`` (``unlearn.impair``: OptimConfig's
    changes); None where ``parts`` names no section."""
    section: type | None = Params
    for part in parts:
        annotation = _field_annotations(section).get(part)
        section = None if annotation is None else _section_of(annotation)
    return section


def _section_of(annotation: Any) -> type | None:
    candidates = [annotation, *getattr(annotation, "__args__", ())]
    return next((c for c in candidates if isinstance(c, type) and (issubclass(c, BaseModel) or is_dataclass(c))), None)


def _field_annotations(section: type | None) -> dict[str, Any]:
    """The fields of a pydantic model or of a core config dataclass, with their types."""
    if section is None:
        return {}
    if issubclass(section, BaseModel):
        return {name: field.annotation for name, field in section.model_fields.items()}
    if is_dataclass(section):
        hints = typing.get_type_hints(section)
        return {field.name: hints[field.name] for field in fields(section)}
    return {}


def _booleans_as_numbers(node: object, section: type | None, path: tuple[str, ...] = ()) -> list[str]:
    """Every boolean given where a number is expected, as ``key.path: problem``: pydantic's lax
    mode reads ``true`` as 1 and ``false`` as 0.0, so a YAML slip (``seed: on``) would run with a
    number nobody wrote. Strict mode would also refuse what YAML reads as text (``lr: 1e-3``)."""
    if not isinstance(node, dict):
        return []
    annotations = _field_annotations(section)
    problems = []
    for key, value in node.items():
        annotation = annotations.get(key)
        if annotation is None:  # an unknown key: validation names it
            continue
        if isinstance(value, bool):
            expected = _number_expected(annotation)
            if expected is not None:
                problems.append(
                    f"{'.'.join([*path, key])}: expected {expected}, got the boolean {str(value).lower()} "
                    "(YAML reads true, false, yes, no, on and off as booleans)"
                )
        else:
            problems += _booleans_as_numbers(value, _section_of(annotation), (*path, key))
    return problems


def _number_expected(annotation: Any) -> str | None:
    """``"an integer"`` or ``"a number"`` where ``annotation`` takes numbers and no boolean."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)  # int | None
    kinds = set(typing.get_args(annotation)) if union else {annotation}
    if bool in kinds or Any in kinds:
        return None
    if float in kinds:
        return "a number"
    return "an integer" if int in kinds else None


SERVICE_ENVIRONMENT = {
    "MLFLOW_TRACKING_URI": ("registry", "tracking_uri"),
    "UNSIR_DVC_REMOTE": ("paths", "dvc_remote"),
    "UNSIR_DVC_REMOTE_ENDPOINT": ("paths", "dvc_remote_endpoint"),
    "UNSIR_STATE_DATABASE_URL": ("state", "database_url"),
}
# Sections the file may leave out whole; the environment can still set a key in them.
OPTIONAL_SECTIONS = ("state",)


def load_params(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Params:
    path = Path(path)
    try:
        raw = _load_yaml(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"parameters file {str(path)!r} not found") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at {err.start})") from None
    except yaml.YAMLError as err:
        # One line for the CLI, with where: the mark is on the error's later lines.
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {_yaml_problem(err)}") from err
    if not isinstance(raw, dict):
        got = "nothing" if raw is None else "a list" if isinstance(raw, list) else repr(raw)
        raise ConfigError(
            f"{path} holds {got}; expected a mapping with the keys {', '.join(Params.model_fields)} "
            "(see docs/configuration.md)"
        )
    # Precedence: a --set flag, then the environment, then the file. The environment says where
    # services live for a deployment; an explicit flag on one command says more than that.
    # (Prefect reads PREFECT_API_URL itself; MLflow's credentials stay in its own variables.)
    for variable, (section, key) in SERVICE_ENVIRONMENT.items():
        if os.environ.get(variable) and section in OPTIONAL_SECTIONS and raw.get(section) is None:
            raw[section] = {}
        if os.environ.get(variable) and isinstance(raw.get(section), dict):
            raw[section][key] = os.environ[variable]
    for override in overrides:
        apply_override(raw, override)
    booleans = _booleans_as_numbers(raw, Params)
    if booleans:
        raise ConfigError(f"invalid {path.name}: {'; '.join(booleans)}")
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(_describe(error) for error in err.errors())
        raise ConfigError(f"invalid {path.name}: {problems}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's problem alone ("found character '@' that cannot start any token"): its first line
    says only what it was doing ("while scanning for the next token")."""
    return getattr(err, "problem", None) or str(err).splitlines()[0]


def _describe(error: Any) -> str:
    """``key.path: problem``; a core dataclass's bound names its field, so it joins the path."""
    loc = [str(part) for part in error["loc"]]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, ConfigValueError):
        return f"{'.'.join([*loc, cause.key])}: {cause.problem}"
    if error["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # a model's, a dataclass's
        return f"{'.'.join(loc)}: {error['msg']}{_expected_keys(loc[:-1])}"
    return f"{'.'.join(loc)}: {error['msg']}{_got(error)}"


# Pydantic's own messages ("Input should be a valid integer") do not say what they were given;
# the validators' own messages ("value_error") already do, and a missing or unknown key has none.
_VALUE_NAMED_ALREADY = ("value_error", "assertion_error", "missing", "extra_forbidden")


def _got(error: Any) -> str:
    value = error.get("input")
    if error["type"] in _VALUE_NAMED_ALREADY or error["loc"][:1] == ("state",):  # a URL may hold a password
        return ""
    if not isinstance(value, str | int | float | bool) and value is not None:
        return ""  # a whole section: the message says what it should have been
    return f", got {value!r}"
