"""The MLflow registry service against a real SQLite tracking store under a temporary folder.

Creating the SQLite schema costs MLflow about 5 s, so one store (and one registered
checkpoint) is shared by the whole module; tests that add versions assert on counts relative
to what they found, so they do not depend on order.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from unsir.checkpoint import (
    WEIGHTS_FILE,
    CheckpointIntegrityError,
    ModelCard,
    load_checkpoint,
    save_checkpoint,
    weights_sha256,
)
from unsir.models import ModelSpec, build_model
from unsir.splits import Normalization
from unsir_pipeline.adapters.registry import (
    IDEMPOTENCY_TAG,
    SERVING_MODEL_FILE,
    WEIGHTS_SHA256_TAG,
    ModelRegistry,
    RegistryError,
)

MODEL_NAME = "digits-small-cnn"
SPEC = ModelSpec("small_cnn", 10, 1)
CARD = ModelCard(SPEC, Normalization((0.3,), (0.4,)), tuple(str(i) for i in range(10)), (1, 8, 8))
# Raw pixels in [0, 1]: the serving contract (the model normalises them itself).
EXAMPLE = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)


def _checkpoint(directory: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_checkpoint(directory, build_model(SPEC), CARD)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    registry = ModelRegistry(uri, MODEL_NAME, "unlearning", artifact_location=(root / "artifacts").as_uri())
    checkpoint = _checkpoint(root / "trained", seed=0)
    with registry.start_run("train", tags={"step": "train"}) as run_id:
        version = registry.register_checkpoint(
            checkpoint,
            input_example=EXAMPLE,
            tags={"dataset": "digits", "forgotten_classes": ""},
            idempotency_key="train-run-1",
            alias="champion",
        )
    return {
        "uri": uri,
        "root": root,
        "registry": registry,
        "version": version,
        "run_id": run_id,
        "checkpoint": checkpoint,
    }


def test_alias_resolves_to_the_registered_version(store: dict) -> None:
    assert store["registry"].has_model()
    assert store["registry"].resolve_alias("champion") == store["version"]


def test_version_carries_tags_run_and_alias(store: dict) -> None:
    info = store["registry"].get_version(store["version"])
    assert info.version == store["version"]
    assert info.tags["dataset"] == "digits"
    assert info.tags[IDEMPOTENCY_TAG] == "train-run-1"
    assert info.run_id == store["run_id"]
    assert "champion" in info.aliases
    assert datetime.fromisoformat(info.created_at).tzinfo is not None


def test_retried_registration_returns_the_same_version(store: dict) -> None:
    registry: ModelRegistry = store["registry"]
    before = registry.list_versions()
    with registry.start_run("train-retry"):
        again = registry.register_checkpoint(
            store["checkpoint"],
            input_example=EXAMPLE,
            tags={"dataset": "digits"},
            idempotency_key="train-run-1",
        )
    assert again == store["version"]
    assert registry.list_versions() == before


def test_loaded_weights_equal_saved_weights(store: dict, tmp_path: Path) -> None:
    model, card, version = store["registry"].load_model("champion", dest=tmp_path / "by-alias")
    assert version == store["version"]
    assert card == CARD
    saved = load_file(str(store["checkpoint"] / WEIGHTS_FILE))
    loaded = model.state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    assert not model.training

    by_number, _, same = store["registry"].load_model(store["version"], dest=tmp_path / "by-number")
    assert same == version
    assert torch.equal(by_number.classifier.weight, model.classifier.weight)


def _served(
    store: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int | None = None
) -> mlflow.pyfunc.PyFuncModel:
    """The registered version (default: the module's) as MLflow loads it to serve it
    (``mlflow.pyfunc.load_model``)."""
    monkeypatch.chdir(tmp_path)  # MLflow's fallback store (./mlflow.db) must not land in the repo
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    # set_tracking_uri also exports the URI to the environment, where every later Workspace of
    # the session would take it over its params.yaml: the environment is restored too.
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, os.environ.get(name, ""))
        if not os.environ[name]:
            monkeypatch.delenv(name)
    mlflow.set_tracking_uri(store["uri"])
    mlflow.set_registry_uri(store["uri"])
    try:
        return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version or store['version']}")
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def test_pyfunc_model_serves_labels_names_and_probabilities(store: dict, tmp_path, monkeypatch) -> None:
    served = _served(store, tmp_path, monkeypatch)
    batch = np.random.default_rng(1).random((5, 1, 8, 8)).astype(np.float32)
    rows = served.predict(batch)
    probabilities = np.array(rows["probabilities"].tolist())
    assert probabilities.shape == (5, 10)
    assert np.all(probabilities >= 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert rows["label"].tolist() == probabilities.argmax(1).tolist()
    assert rows["class_name"].tolist() == [CARD.class_names[i] for i in rows["label"]]
    # The served weights are the checkpoint's: the same probabilities as its own model's.
    model, card = load_checkpoint(store["checkpoint"])
    with torch.inference_mode():
        own = torch.softmax(model(card.normalization.apply(torch.from_numpy(batch))), dim=1).numpy()
    np.testing.assert_allclose(probabilities, own, rtol=1e-5, atol=1e-6)
    assert served.metadata.metadata["input_shape"] == [-1, 1, 8, 8]
    # float64, as numpy and JSON give numbers, is read as float32, not refused.
    assert served.predict(batch.astype(np.float64))["label"].tolist() == rows["label"].tolist()


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (np.full((3000, 64), 0.5), r"got shape \(3000, 64\)"),
        (np.full((3000, 1, 8, 8), 0.5).tolist(), None),  # a list: accepted, it is the right shape
        (np.full((3000, 1, 8, 8), 2.5).tolist(), r"got \[2\.500, 2\.500\]"),
        ([[[[0.5] * 8] * 8]] * 2999 + [[[[0.5] * 7] * 8]], r"got list input that is not an array of numbers"),
    ],
    ids=["flattened", "list", "out-of-range-list", "ragged"],
)
def test_a_large_bad_batch_is_refused_in_one_short_line(store: dict, tmp_path, monkeypatch, bad, reason) -> None:
    # MLflow's own schema check ran first and put the whole input in its message (200 KB for
    # 500 digits sent as a list); the model's check names the shape or range and what it expects.
    served = _served(store, tmp_path, monkeypatch)
    if reason is None:
        assert len(served.predict(bad)) == 3000
        return
    with pytest.raises(ValueError, match=reason) as info:
        served.predict(bad)
    message = str(info.value)
    assert len(message) < 400 and "\n" not in message
    assert "images of shape (N, 1, 8, 8) in [0, 1]" in message or "do not normalise" in message
    if "not an array of numbers" in reason:
        return  # the scoring server makes JSON an array itself: `unsir serve` refuses ragged lists before it
    # The same through MLflow's scoring server, which put the input's repr (kilobytes) before it
    # in the error it answers HTTP 400 with.
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc import scoring_server

    body = json.dumps({"inputs": bad if isinstance(bad, list) else bad.tolist()})
    with pytest.raises(MlflowException) as answered:
        scoring_server.invocations(body, "application/json", served, None)
    assert answered.value.get_http_status_code() == 400
    assert json.loads(answered.value.serialize_as_json())["message"] == message


def test_the_in_process_client_imports_without_a_deprecation_warning() -> None:
    """Starlette's TestClient warned on import ('Using `httpx` with `starlette.testclient` is
    deprecated; install `httpx2` instead') in every run of the serving tests: the dev extra
    declared httpx, which Starlette takes only when httpx2 is missing."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", "import starlette.testclient"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-500:]


@pytest.fixture
def scoring_client(store: dict, tmp_path, monkeypatch):
    """An HTTP client of the app `unsir serve` runs for the registered version: MLflow's scoring
    app behind the request check (``scoring_app.checked_app``), in-process."""
    from starlette.testclient import TestClient

    from unsir_pipeline.adapters.scoring_app import checked_app

    return TestClient(checked_app(_served(store, tmp_path, monkeypatch)))


def _answer(client, payload) -> tuple[int, str]:
    response = client.post("/invocations", json=payload)
    return response.status_code, response.json().get("message", "")


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        ({"input": EXAMPLE.tolist()}, "unknown key(s) ['input'] in the request body (did you mean 'inputs'?)"),
        ({"data": EXAMPLE.tolist()}, "unknown key(s) ['data']"),
        ({"inputs": EXAMPLE.tolist(), "instances": EXAMPLE.tolist()}, "several input keys ['inputs', 'instances']"),
    ],
    ids=["input", "data", "two"],
)
def test_a_wrong_top_level_key_is_refused_naming_it_and_the_accepted_keys(scoring_client, payload, named) -> None:
    """MLflow parses the body before the model runs: {"input": ...} reached the model as a dict
    ('got dict input that is not an array of numbers'), {"data": ...} got MLflow's 'Received
    dictionary with input fields: []' (the bad key filtered out) and a paragraph on MLflow 2.0."""
    status, message = _answer(scoring_client, payload)
    assert status == 400
    assert message.startswith(named)
    assert "expected a JSON object with exactly one of 'inputs', 'instances', as {" in message
    assert "float32 images of shape (N, 1, 8, 8) in [0, 1]" in message
    assert _answer(scoring_client, {"inputs": EXAMPLE.tolist()})[0] == 200


def _ragged(images: list, where: tuple[int, ...], value) -> list:
    """``images`` with the element at ``where`` replaced by ``value``."""
    images = json.loads(json.dumps(images))
    parent = images
    for index in where[:-1]:
        parent = parent[index]
    parent[where[-1]] = value
    return images


@pytest.mark.parametrize(
    ("payload", "named"),
    [
        (
            {"inputs": _ragged(EXAMPLE.tolist(), (1, 0, 3), [0.5] * 7)},
            "inputs is ragged: inputs[1][0][3] is a list of 7 where inputs[0][0][0] is a list of 8",
        ),
        (
            {"instances": _ragged(EXAMPLE.tolist(), (1, 0, 3, 2), [0.5, 0.5])},
            "instances is ragged: instances[1][0][3][2] is a list of 2 where instances[0][0][0][0] is a single value",
        ),
        (
            {"inputs": [[0.5] * 64, [0.5] * 60]},
            "inputs is ragged: inputs[1] is a list of 60 where inputs[0] is a list of 64",
        ),
    ],
    ids=["short-row", "too-deep", "flattened-rows"],
)
def test_a_ragged_batch_is_refused_naming_where_and_the_shape_expected(scoring_client, payload, named) -> None:
    """MLflow makes the lists an array before the model runs and answered 'Invalid input.
    setting an array element with a sequence. The requested array has an inhomogeneous shape
    after 3 dimensions. The detected shape was (2, 1, 8) + inhomogeneous part.'"""
    status, message = _answer(scoring_client, payload)
    assert status == 400
    assert message == f"{named}; expected float32 images of shape (N, 1, 8, 8) in [0, 1], every image of the same shape"


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"top_k": 3}, "unknown params ['top_k'] in the request body"),
        (3, "params 3 in the request body"),
    ],
    ids=["unknown", "not-an-object"],
)
def test_params_the_model_does_not_take_are_refused_not_ignored(scoring_client, params, named) -> None:
    """The model declares no params: MLflow dropped them with a warning in the server's log and
    answered 200, so a client asking for top_k=3 got every probability and no word why."""
    status, message = _answer(scoring_client, {"inputs": EXAMPLE.tolist(), "params": params})
    assert status == 400
    assert message == f"{named}; this model takes no params: send the body without 'params'"
    for nothing in ({}, None):  # no params, as MLflow's protocol allows
        assert _answer(scoring_client, {"inputs": EXAMPLE.tolist(), "params": nothing})[0] == 200


def _sent(client, body: bytes | str, content_type: str | None) -> tuple[int, dict]:
    """The status and the JSON answer to ``body`` sent with ``content_type`` (None: no header)."""
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post("/invocations", content=body, headers=headers)
    assert response.headers["content-type"] == "application/json", response.text[:300]
    return response.status_code, response.json()


EXPECTED_BODY = (
    "expected Content-Type 'application/json', "
    'with a body {"inputs": <float32 images of shape (N, 1, 8, 8) in [0, 1]>}'
)


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        (None, "no Content-Type header in the request"),
        ("text/plain", "Content-Type 'text/plain', which this server does not read"),
        ("application/xml", "Content-Type 'application/xml', which this server does not read"),
        ("application/x-parquet", "Content-Type 'application/x-parquet', which this server does not read"),
        ("APPLICATION/JSON", "Content-Type 'APPLICATION/JSON', which this server does not read"),
        (
            "application/x-www-form-urlencoded",
            "Content-Type 'application/x-www-form-urlencoded' (curl -d sends it unless given "
            "-H 'Content-Type: application/json'), which this server does not read",
        ),
        (
            "application/json; charset=latin-1",
            "Content-Type 'application/json; charset=latin-1': the server reads JSON in UTF-8, "
            "with no parameter but charset=utf-8",
        ),
    ],
    ids=["none", "text", "xml", "x-parquet", "upper-case", "curl-d", "latin-1"],
)
def test_a_content_type_the_server_does_not_read_is_refused_naming_it(scoring_client, content_type, named) -> None:
    """MLflow answered 415 in plain text, not its error format, listing CSV and parquet (which this
    model cannot take) among the types it reads, and a request with no Content-Type with HTTP 500
    'Internal Server Error' (its parser split None)."""
    body = json.dumps({"inputs": EXAMPLE.tolist()}) if content_type and "json" in content_type else "<images/>"
    status, answer = _sent(scoring_client, body, content_type)
    assert status == 415
    assert answer["error_code"] == "BAD_REQUEST"
    assert answer["message"] == f"{named}; {EXPECTED_BODY}"
    assert _sent(scoring_client, json.dumps({"inputs": EXAMPLE.tolist()}), "application/json; charset=UTF-8")[0] == 200


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        ("image/png", "Content-Type 'image/png': an image file, which this server does not read"),
        (
            "multipart/form-data; boundary=x",
            "Content-Type 'multipart/form-data; boundary=x': a form upload (curl -F), which this server does not read",
        ),
    ],
    ids=["png", "form-upload"],
)
def test_an_image_file_posted_as_such_is_told_how_to_send_its_pixels(scoring_client, content_type, named) -> None:
    """A PNG posted as it is (curl --data-binary @digit.png, or curl -F) was told only the JSON
    body the server takes, not how an image file becomes one."""
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray((EXAMPLE[0, 0] * 255).astype(np.uint8)).save(png, "PNG")
    status, answer = _sent(scoring_client, png.getvalue(), content_type)
    assert status == 415
    assert answer["message"] == (
        f"{named}; {EXPECTED_BODY} (an image file's pixels: numpy.asarray(PIL.Image.open(file)), "
        "in (C, H, W) order, (1, 8, 8), divided by 255; docs/serving.md, 'Image files')"
    )


AS_INPUTS = 'as {"inputs": <float32 images of shape (N, 1, 8, 8) in [0, 1]>}'


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b"", f"the request body is empty; expected a JSON object, {AS_INPUTS}"),
        (
            json.dumps({"inputs": EXAMPLE.tolist()})[:-40].encode(),
            f"the request body is not JSON (Expecting ',' delimiter at line 1, column "
            f"{len(json.dumps({'inputs': EXAMPLE.tolist()})) - 39}); expected a JSON object, {AS_INPUTS}",
        ),
        (
            b'{"inputs": "\xff"}',
            "the request body is not JSON ('utf-8' codec can't decode byte 0xff in position 12: invalid start "
            f"byte); expected a JSON object, {AS_INPUTS}",
        ),
        (
            json.dumps(EXAMPLE.tolist()).encode(),
            f"the request body is a JSON list, not an object; expected a JSON object, {AS_INPUTS} "
            "(a list of images goes under 'inputs')",
        ),
        (b'"images"', f"the request body is a JSON string, not an object; expected a JSON object, {AS_INPUTS}"),
    ],
    ids=["empty", "truncated", "not-utf-8", "bare-list", "string"],
)
def test_a_body_that_is_not_a_json_object_is_refused_naming_why_and_not_quoted(scoring_client, body, named) -> None:
    """MLflow answered a body it could not parse with 'Invalid input. Ensure that input is a valid
    JSON formatted string. Error: ...' followed by the whole body (kilobytes of pixels), and a
    bare list of images with 'The input must be a JSON dictionary with exactly one of the input
    fields {...}. Received a list.', neither saying what the model takes."""
    status, answer = _sent(scoring_client, body, "application/json")
    assert status == 400
    assert answer["message"] == named


@pytest.mark.parametrize("depth", [5_000, 100_000])
def test_lists_nested_past_the_parsers_depth_are_refused_not_a_server_error(scoring_client, depth) -> None:
    """The check's own JSON parser raised RecursionError on lists nested a few thousand deep: HTTP
    500 'Internal Server Error' (at a depth under Python's limit, MLflow answered its parser's
    RecursionError)."""
    body = '{"inputs": ' + "[" * depth + "]" * depth + "}"
    status, answer = _sent(scoring_client, body, "application/json")
    assert (status, answer["message"]) == (
        400,
        f"the request body nests lists or objects too deep to parse; expected a JSON object, {AS_INPUTS}",
    )


def _with_pixel(value) -> list:
    """EXAMPLE as lists, one pixel of its second image set to ``value``."""
    return _ragged(EXAMPLE.tolist(), (1, 0, 2, 5), value)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), None])
def test_a_nan_infinite_or_null_pixel_is_refused_through_the_server_not_predicted(scoring_client, value) -> None:
    """Python's json writes NaN and Infinity as such and MLflow's parser reads them, a null as NaN:
    the model refuses them naming the image; a prediction for such an image is no answer."""
    status, answer = _sent(scoring_client, json.dumps({"inputs": _with_pixel(value)}), "application/json")
    assert (status, answer["message"]) == (
        400,
        "expected finite pixel values in [0, 1], got NaN, infinity or null in 1 image(s) of 2, at index [1]",
    )


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("inputs", "0.5", 'inputs[1][0][2][5] is the JSON string "0.5"'),
        ("instances", True, "instances[1][0][2][5] is the JSON boolean true"),
        ("inputs", False, "inputs[1][0][2][5] is the JSON boolean false"),
        ("inputs", {"value": 0.5}, 'inputs[1][0][2][5] is the JSON object {"value": 0.5}'),
        ("inputs", "x" * 100, 'inputs[1][0][2][5] is the JSON string "' + "x" * 30 + "..."),
    ],
    ids=["string", "true", "false", "object", "long-string"],
)
def test_a_pixel_that_is_not_a_json_number_is_refused_naming_it_and_where(scoring_client, key, value, named) -> None:
    """The model's float32 conversion read a string "0.5" as 0.5 and true as 1.0: such a batch
    was answered 200 with labels, as if the client had sent numbers."""
    expected = ", not a number; expected float32 images of shape (N, 1, 8, 8) in [0, 1], every pixel a JSON number"
    later = _with_pixel(value)
    later[1][0][3][1] = "0.25"  # a second bad pixel after it: the first is the one named
    for images in (_with_pixel(value), later):
        status, answer = _sent(scoring_client, json.dumps({key: images}), "application/json")
        assert (status, answer.get("error_code")) == (400, "BAD_REQUEST"), answer
        assert answer["message"].startswith(named)
        assert answer["message"].endswith(expected)
    assert _sent(scoring_client, json.dumps({key: _with_pixel(1)}), "application/json")[0] == 200  # an int is one


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (None, "inputs is the JSON null, not a list of images"),
        ("hello", 'inputs is the JSON string "hello", not a list of images'),
        (0.5, "inputs is the JSON number 0.5, not a list of images"),
        ({"image": [[0.5]]}, 'inputs is the JSON object {"image": [[0.5]]}, not a list of images'),
    ],
    ids=["null", "string", "number", "object"],
)
def test_a_value_under_inputs_that_is_not_a_list_is_refused_naming_it(scoring_client, value, named) -> None:
    """MLflow made it an array for the model, which answered null and 0.5 with 'got shape ()', a
    string with "got ndarray input ... could not convert string to float: np.str_('hello')", an
    object with "float() argument must be a string or a real number, not 'dict'"."""
    status, answer = _sent(scoring_client, json.dumps({"inputs": value}), "application/json")
    assert (status, answer.get("error_code")) == (400, "BAD_REQUEST"), answer
    assert answer["message"] == f"{named}; expected float32 images of shape (N, 1, 8, 8) in [0, 1], as [image, ...]"


def test_the_server_says_which_version_answers_and_which_classes_it_forgot(store: dict, tmp_path, monkeypatch) -> None:
    """Nothing the server answered named the version serving: GET /version gave MLflow's own
    version ('3.17.2'), /metadata and /model 404, and an answer no version, though the alias moves
    under `unsir serve` and a client cannot tell which model labelled its images."""
    from starlette.testclient import TestClient

    from unsir_pipeline.adapters.scoring_app import checked_app

    with store["registry"].start_run("unlearn"):
        version = store["registry"].register_checkpoint(
            save_checkpoint(tmp_path / "forgot-3", build_model(SPEC), replace(CARD, forgotten_classes=(3,))),
            input_example=EXAMPLE,
            tags={"forgotten_classes": "3"},
            idempotency_key="served-forgot-3",
        )
    uri = f"models:/{MODEL_NAME}/{version}"
    client = TestClient(checked_app(_served(store, tmp_path, monkeypatch, version), uri))
    described = client.get("/model")
    assert described.status_code == 200, described.text
    assert described.json() == {
        "name": MODEL_NAME,
        "alias": None,
        "version": version,
        "model_uri": uri,
        "class_names": [str(i) for i in range(10)],
        "forgotten_classes": ["3"],
        "forgotten_labels": [3],
        "input": "float32 images of shape (N, 1, 8, 8) in [0, 1]",
    }
    answered = client.post("/invocations", json={"inputs": EXAMPLE.tolist()})
    refused = client.post("/invocations", json={"input": EXAMPLE.tolist()})
    assert (answered.status_code, refused.status_code) == (200, 400)
    assert answered.headers["model-version"] == refused.headers["model-version"] == str(version)


def test_a_whole_number_past_floats_range_is_refused_not_a_server_error(scoring_client) -> None:
    """A JSON integer of 309 digits or more is no float: the server's NaN check, making the batch
    float32, raised OverflowError ('int too large to convert to float'), HTTP 500."""
    body = json.dumps({"inputs": _with_pixel(-424242)}).replace("-424242", "1" + "0" * 400)
    status, answer = _sent(scoring_client, body, "application/json")
    assert (status, answer["message"]) == (
        400,
        "expected finite pixel values in [0, 1], got a whole number too large for a float in 1 image(s) of 2, "
        "at index [1]",
    )


def test_a_finite_pixel_past_float32s_range_is_named_out_of_range_not_nan(scoring_client) -> None:
    """1e39 is a finite JSON number beyond float32's range: made float32 it read as infinity, and
    the answer said 'got NaN, infinity or null' of a number the user wrote finite."""
    status, answer = _sent(scoring_client, json.dumps({"inputs": _with_pixel(1e39)}), "application/json")
    assert status == 400
    assert "NaN" not in answer["message"] and "[0, 1]" in answer["message"], answer["message"]


def test_a_nan_pixel_is_refused_for_a_version_whose_model_code_let_it_through(store, tmp_path, monkeypatch) -> None:
    """A version runs the model code it was registered with: code from before the model's NaN
    check answered a NaN pixel as a label (class 0, NaN probabilities), HTTP 200, and `unsir serve`
    serves such a version. The server's check refuses it as the model does now."""
    from starlette.testclient import TestClient

    from unsir_pipeline.adapters.scoring_app import checked_app

    version = _register(store, store["checkpoint"], "model-code-without-the-nan-check")
    stored = _stored_weights(store, version).parents[2] / SERVING_MODEL_FILE.name
    code = stored.read_text()
    assert code.count("    if not finite.all():") == 1
    stored.write_text(code.replace("    if not finite.all():", "    if False:  # as before the NaN check"))
    client = TestClient(checked_app(_served(store, tmp_path, monkeypatch, version)))
    assert _sent(client, json.dumps({"inputs": []}), "application/json") == (200, {"predictions": []})
    for value in (float("nan"), float("inf"), None):
        status, answer = _sent(client, json.dumps({"instances": _with_pixel(value)}), "application/json")
        assert (status, answer.get("message")) == (
            400,
            "expected finite pixel values in [0, 1], got NaN, infinity or null in 1 image(s) of 2, at index [1]",
        )


@pytest.mark.parametrize(
    ("images", "named"),
    [
        ((EXAMPLE * 255).round(), "whole numbers up to 255 are 8-bit pixels: divide them by 255"),
        ((EXAMPLE * 16).round(), "whole numbers up to 16 look like scikit-learn's digits"),
        ((EXAMPLE - 0.3) / 0.4, "do not normalise: the model applies its own mean and std"),
    ],
    ids=["8-bit", "sklearn-digits", "normalised"],
)
def test_pixels_outside_0_1_are_refused_through_the_server_naming_the_scale(scoring_client, images, named) -> None:
    """A raw 0-255 image read as if in [0, 1] gets a confident wrong answer: the served champion
    misread raw inputs once. The model refuses the batch naming its range and the likely scale."""
    status, message = _answer(scoring_client, {"instances": images.tolist()})
    assert status == 400
    assert message.startswith("expected pixel values in [0, 1] as the data set gives them, got [")
    assert named in message


@pytest.mark.parametrize(
    ("key", "table"),
    [
        ("dataframe_split", lambda: json.loads(_table(EXAMPLE).to_json(orient="split", index=False))),
        ("dataframe_records", lambda: json.loads(_table(EXAMPLE).to_json(orient="records"))),
        ("dataframe_records", lambda: [{"image": image} for image in EXAMPLE.tolist()]),
    ],
    ids=["split", "records", "a-column-of-images"],
)
def test_a_data_frame_in_json_is_refused_naming_the_key_the_model_takes(scoring_client, key, table) -> None:
    """MLflow makes a data frame of these keys, which the model refused: pixel columns as
    flattened images ('send them as images.reshape(-1, 1, 8, 8)', not saying under which key,
    while the key check listed both as accepted), a column of images as 'got DataFrame input that
    is not an array of numbers'."""
    status, message = _answer(scoring_client, {key: table()})
    assert status == 400
    assert message == (
        f"{key!r} sends a data frame, which this model does not take; expected a JSON object, {AS_INPUTS} "
        '(a table of pixel columns in (C, H, W) order: {"inputs": table.to_numpy().reshape(-1, 1, 8, 8).tolist()})'
    )


def _table(images: np.ndarray, columns: int = 64):
    """Flattened images as a data frame of pixel columns, as a CSV or parquet client holds them."""
    import pandas as pd

    flat = images.reshape(len(images), -1)[:, :columns]
    return pd.DataFrame(flat, columns=[f"pixel_{i}" for i in range(flat.shape[1])])


def _parquet(frame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


TABLE_REFUSED = (
    "a table, one flattened image per row, which this model does not take; " + EXPECTED_BODY + " (a table of "
    'pixel columns in (C, H, W) order: {"inputs": table.to_numpy().reshape(-1, 1, 8, 8).tolist()})'
)


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (_table(EXAMPLE).to_csv(index=False), "text/csv"),
        (_table(EXAMPLE).to_csv(index=False, header=False), "text/csv"),
        (_table(EXAMPLE, columns=63).to_csv(index=False), "text/csv"),
        (_table(EXAMPLE).assign(pixel_5=[0.5, "dark"]).to_csv(index=False), "text/csv"),
        (_table(EXAMPLE * np.nan).to_csv(index=False), "text/csv"),
        (_table(EXAMPLE * 255).round().to_csv(index=False), "text/csv; charset=utf-8"),
        ("", "text/csv"),
        (",".join(_table(EXAMPLE).columns) + "\n", "text/csv"),
        (_parquet(_table(EXAMPLE)), "application/vnd.apache.parquet"),
        (b"PAR1 not a parquet file", "application/vnd.apache.parquet"),
    ],
    ids=[
        "csv",
        "no-header",
        "63-columns",
        "not-numbers",
        "nan",
        "8-bit",
        "empty",
        "header-only",
        "parquet",
        "bad-parquet",
    ],
)
def test_a_csv_or_parquet_table_is_refused_naming_the_form_the_model_takes(scoring_client, body, content_type) -> None:
    """MLflow reads CSV and parquet into a data frame: one flattened image per row, which the model
    refused telling the client to send images.reshape(-1, 1, 8, 8), which no table can carry; a
    CSV without a header lost its first image to the header ('got shape (1, 64)' for two), and an
    empty or broken body got MLflow's 'Failed to parse input as a Pandas DataFrame' with its
    stack trace."""
    status, answer = _sent(scoring_client, body, content_type)
    assert status == 415
    assert answer["message"] == f"Content-Type {content_type!r}: {TABLE_REFUSED}"
    assert "stack_trace" not in answer


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        ("text/csv", "Content-Type 'text/csv'"),
        ("text/plain", "Content-Type 'text/plain'"),
        ("APPLICATION/JSON", "Content-Type 'APPLICATION/JSON'"),
        (
            "application/x-www-form-urlencoded",
            "Content-Type 'application/x-www-form-urlencoded' (curl -d sends it unless given "
            "-H 'Content-Type: application/json')",
        ),
    ],
    ids=["csv", "text", "upper-case", "curl-d"],
)
def test_json_sent_under_another_content_type_is_told_so(scoring_client, content_type, named) -> None:
    """JSON sent as CSV reached the model as a table of the JSON's text ('got shape (0, 128)'),
    and under another type got MLflow's list of the types it reads."""
    status, answer = _sent(scoring_client, json.dumps({"inputs": EXAMPLE.tolist()}), content_type)
    assert status == 415
    assert answer["message"] == f"{named} on a JSON body (only the header is wrong); {EXPECTED_BODY}"


def test_registration_checks_the_requirements_by_name_without_mapping_every_installed_file(
    store: dict, tmp_path: Path, monkeypatch
) -> None:
    """MLflow checks a logged model's pip requirements against this environment; the first time
    in a process it maps every installed distribution's files to modules first
    (``packages_distributions``, 0.8 s of a forget run). The model's requirements are
    distribution names, checked by name: no map is built, and MLflow's is left as it was."""
    import importlib_metadata
    from mlflow.utils import requirements_utils

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)  # a fresh process's
    scans: list[int] = []
    scan = importlib_metadata.packages_distributions
    monkeypatch.setattr(importlib_metadata, "packages_distributions", lambda: scans.append(1) or scan())
    registry: ModelRegistry = store["registry"]
    with registry.start_run("requirements"):
        version = registry.register_checkpoint(
            _checkpoint(store["root"] / "requirements", seed=5),
            input_example=EXAMPLE,
            tags={},
            idempotency_key="requirements-by-name",
        )
    assert scans == []
    assert requirements_utils._MODULES_TO_PACKAGES is None
    registry.load_model(version, dest=tmp_path)
    (requirements,) = tmp_path.rglob("requirements.txt")
    assert {line.split("==")[0] for line in requirements.read_text().split()} >= {"torch", "safetensors", "numpy"}


def test_a_normalised_input_example_is_refused(store: dict, tmp_path: Path) -> None:
    normalised = np.random.default_rng(2).standard_normal((2, 1, 8, 8)).astype(np.float32)
    registry: ModelRegistry = store["registry"]
    with registry.start_run(run_name="bad-example"), pytest.raises(RegistryError, match=r"raw images in \[0, 1\]"):
        registry.register_checkpoint(store["checkpoint"], input_example=normalised, tags={}, idempotency_key="bad")


def test_missing_alias_is_named(store: dict) -> None:
    with pytest.raises(RegistryError, match="no alias 'retired'") as info:
        store["registry"].resolve_alias("retired")
    assert MODEL_NAME in str(info.value)


def test_unregistered_model_is_reported_as_such(store: dict) -> None:
    other = ModelRegistry(store["uri"], "never-registered", "unlearning")
    assert not other.has_model()
    with pytest.raises(RegistryError, match="'never-registered' is not registered"):
        other.resolve_alias("champion")
    with pytest.raises(RegistryError, match="no version 7"):
        store["registry"].get_version(7)


def test_new_key_registers_a_new_version_and_aliases_move(store: dict, tmp_path: Path) -> None:
    registry: ModelRegistry = store["registry"]
    count = len(registry.list_versions())
    with registry.start_run("unlearn"):
        new = registry.register_checkpoint(
            _checkpoint(tmp_path / "unlearned", seed=1),
            input_example=EXAMPLE,
            tags={"forgotten_classes": "3"},
            idempotency_key="unlearn-run-1",
            alias="challenger",
        )
    versions = registry.list_versions()
    assert len(versions) == count + 1
    assert [v.version for v in versions] == sorted(v.version for v in versions)
    assert registry.resolve_alias("challenger") == new != store["version"]

    registry.set_version_tags(new, {"promoted_by": "test"})
    registry.set_alias("champion", new)
    registry.delete_alias("challenger")
    info = registry.get_version(new)
    assert info.aliases == ("champion",)
    assert info.tags["promoted_by"] == "test"
    with pytest.raises(RegistryError, match="'challenger'"):
        registry.resolve_alias("challenger")
    registry.set_alias("champion", store["version"])  # leave the module's alias as found


def test_run_logging_reaches_the_tracking_store(store: dict, tmp_path: Path) -> None:
    registry: ModelRegistry = store["registry"]
    report = tmp_path / "report.txt"
    report.write_text("ok\n")
    with registry.start_run("evaluate", tags={"kind": "eval"}) as run_id:
        registry.log_params({"lr": 0.01, "epochs": 3})
        registry.log_metrics({"forget_accuracy": 0.05}, step=2)
        registry.log_dict({"classes": [3]}, "forget.json")
        registry.log_artifact(report, "reports")
    run = mlflow.MlflowClient(tracking_uri=store["uri"]).get_run(run_id)
    assert run.data.params == {"lr": "0.01", "epochs": "3"}
    assert run.data.metrics == {"forget_accuracy": 0.05}
    assert run.data.tags["kind"] == "eval"
    artifacts = {a.path for a in mlflow.MlflowClient(tracking_uri=store["uri"]).list_artifacts(run_id)}
    assert {"forget.json", "reports"} <= artifacts


def test_logging_and_registering_need_an_active_run(store: dict) -> None:
    registry: ModelRegistry = store["registry"]
    with pytest.raises(RegistryError, match="no active run"):
        registry.log_metrics({"x": 1.0})
    with pytest.raises(RegistryError, match="no active run"):
        registry.register_checkpoint(store["checkpoint"], input_example=EXAMPLE, tags={}, idempotency_key="k")


def test_pickled_module_loads_only_when_allowed(store: dict, tmp_path: Path) -> None:
    import mlflow.pytorch

    uri = store["uri"]
    registry = ModelRegistry(uri, "pickled", "legacy", artifact_location=(tmp_path / "artifacts").as_uri())
    checkpoint = _checkpoint(tmp_path / "ck", seed=2)
    torch.manual_seed(2)
    module = build_model(SPEC)
    # A version as older code logged it: a pickled module, with its card as an extra file.
    with registry.start_run("legacy") as run_id:
        info = mlflow.pytorch.log_model(
            module,
            name="model",
            serialization_format="pickle",  # MLflow 3.17 defaults to pt2 (torch.export)
            pip_requirements=["torch"],
            extra_files=[str(checkpoint / "card.json")],
        )
        client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.create_registered_model("pickled")
        client.create_model_version("pickled", info.model_uri, run_id=run_id, model_id=info.model_id)

    with pytest.raises(RegistryError, match="allow_pickled_module=True"):
        registry.load_model(1, dest=tmp_path / "refused")
    model, card, version = registry.load_model(1, dest=tmp_path / "allowed", allow_pickled_module=True)
    assert version == 1 and card == CARD
    assert torch.equal(model.classifier.weight, module.classifier.weight)


# --- checkpoint integrity ------------------------------------------------------------------


def _stored_weights(store: dict, version: int) -> Path:
    """The weights file of ``version`` inside the artifact store (not a downloaded copy)."""
    client = mlflow.MlflowClient(tracking_uri=store["uri"], registry_uri=store["uri"])
    model_id = client.get_model_version(MODEL_NAME, str(version)).source.removeprefix("models:/")
    found = [p for p in (store["root"] / "artifacts").rglob(WEIGHTS_FILE) if model_id in p.parts]
    assert len(found) == 1, found
    return found[0]


def test_a_version_registered_with_older_model_code_is_told_apart(store: dict, tmp_path: Path) -> None:
    """A version serves the model code it was registered with (models from code): one
    registered before the serving hints kept its older answers to bad input, and `unsir serve`
    served it without a word."""
    registry: ModelRegistry = store["registry"]
    version = _register(store, store["checkpoint"], "older-model-code")
    assert registry.model_code_is_current(version)
    stored = _stored_weights(store, version).parents[2] / SERVING_MODEL_FILE.name
    stored.write_text(stored.read_text().replace("def _conversion_hint(", "def _an_older_hint("))
    assert not registry.model_code_is_current(version)


def _register(store: dict, checkpoint: Path, key: str) -> int:
    registry: ModelRegistry = store["registry"]
    with registry.start_run(key):
        return registry.register_checkpoint(checkpoint, input_example=EXAMPLE, tags={}, idempotency_key=key)


def test_registration_records_the_weights_sha256(store: dict) -> None:
    tags = store["registry"].get_version(store["version"]).tags
    assert tags[WEIGHTS_SHA256_TAG] == weights_sha256(store["checkpoint"])
    assert tags[WEIGHTS_SHA256_TAG] == weights_sha256(_stored_weights(store, store["version"]).parent)


def test_weights_tag_cannot_claim_another_digest(store: dict) -> None:
    registry: ModelRegistry = store["registry"]
    digest = weights_sha256(store["checkpoint"])
    refused = rf"tag 'weights_sha256' is 0{{64}}, but the weights file hashes to {digest}"
    with registry.start_run("reserved"), pytest.raises(RegistryError, match=refused):
        registry.register_checkpoint(
            store["checkpoint"],
            input_example=EXAMPLE,
            tags={WEIGHTS_SHA256_TAG: "0" * 64},
            idempotency_key="reserved-tag",
        )


def test_bit_flipped_stored_weights_are_refused_naming_the_version(store: dict, tmp_path: Path) -> None:
    version = _register(store, _checkpoint(tmp_path / "flip", seed=5), "flip-bits")
    recorded = store["registry"].get_version(version).tags[WEIGHTS_SHA256_TAG]
    stored = _stored_weights(store, version)
    data = bytearray(stored.read_bytes())
    data[-3] ^= 0x10  # one bit of one weight: still a valid safetensors file
    stored.write_bytes(bytes(data))
    found = weights_sha256(stored.parent)
    with pytest.raises(RegistryError) as caught:
        store["registry"].load_model(version, dest=tmp_path / "dl")
    message = str(caught.value)
    assert f"version {version}" in message and recorded in message and found in message
    assert isinstance(caught.value.__cause__, CheckpointIntegrityError)


def test_truncated_stored_weights_are_refused_not_a_parser_error(store: dict, tmp_path: Path) -> None:
    version = _register(store, _checkpoint(tmp_path / "cut", seed=6), "truncate")
    stored = _stored_weights(store, version)
    stored.write_bytes(stored.read_bytes()[:100])
    with pytest.raises(RegistryError, match=rf"version {version}: weights file .* has sha256 [0-9a-f]{{64}}, but"):
        store["registry"].load_model(version, dest=tmp_path / "dl")


def test_a_version_whose_artifact_folder_was_deleted_is_named(store: dict, tmp_path: Path) -> None:
    """The model's folder deleted from the artifact store failed a batch with MLflow's
    "No such artifact: 'MLmodel'", naming no version."""
    import shutil

    version = _register(store, _checkpoint(tmp_path / "gone", seed=8), "deleted-folder")
    shutil.rmtree(next(p for p in _stored_weights(store, version).parents if p.name.startswith("m-")))
    with pytest.raises(RegistryError, match=rf"models:/{MODEL_NAME}/{version}: the artifact store holds no MLmodel"):
        store["registry"].load_model(version, dest=tmp_path / "dl")


def test_unparseable_weights_are_an_integrity_error(tmp_path: Path) -> None:
    checkpoint = _checkpoint(tmp_path / "local", seed=7)
    (checkpoint / WEIGHTS_FILE).write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json")
    with pytest.raises(CheckpointIntegrityError, match="not a readable safetensors file"):
        load_checkpoint(checkpoint, label="the local copy")


def test_an_unreachable_server_is_named_not_reported_as_a_missing_version(monkeypatch) -> None:
    import socket

    for variable in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
        monkeypatch.setenv(variable, os.environ.get(variable, ""))  # restored after the test
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    registry = ModelRegistry(url, MODEL_NAME, "exp", http_timeout_s=2, http_max_retries=0)
    with pytest.raises(RegistryError, match="cannot reach the MLflow registry at http://127.0.0.1"):
        registry.get_version(1)


@pytest.mark.parametrize(("content", "problem"), [(b"garbage", "file is not a database"), (None, "malformed")])
def test_a_damaged_registry_database_is_named(store: dict, tmp_path: Path, content, problem) -> None:
    """A truncated or overwritten mlflow.db used to fail every command with a bare
    "(sqlite3.DatabaseError) database disk image is malformed", naming no file."""
    db = tmp_path / "mlflow.db"
    if content is None:  # the module's store cut to a third, as a full disk or a bad copy leaves it
        source = Path(store["uri"].removeprefix("sqlite:///")).read_bytes()
        content = source[: len(source) // 3]
    db.write_bytes(content)
    uri = f"sqlite:///{db}"
    with pytest.raises(RegistryError, match=rf"cannot open the MLflow registry at {uri}: .*{problem}"):
        ModelRegistry(uri, MODEL_NAME, "exp")


def test_a_registry_path_that_cannot_be_opened_is_named_at_once(tmp_path: Path) -> None:
    """`registry.tracking_uri: sqlite:///state/mlflow` (the folder, not the file) kept a command
    waiting 100 s through MLflow's ten retries, printing nine warnings, before it failed."""
    uri = f"sqlite:///{tmp_path}"
    started = time.monotonic()
    with pytest.raises(RegistryError, match=rf"cannot open the MLflow registry at {uri}: {tmp_path} is a directory"):
        ModelRegistry(uri, MODEL_NAME, "exp")
    assert time.monotonic() - started < 5


def test_a_failed_registration_leaves_no_logged_model(store: dict, tmp_path: Path) -> None:
    """The registry's database refused the new version after the model was logged (a full disk,
    here a real SQLite trigger that fails the insert as one would): the logged model, its
    checkpoint and all, used to stay in the experiment's models, READY, with no version, one
    more at every retry."""
    registry: ModelRegistry = store["registry"]
    database = store["uri"].removeprefix("sqlite:///")
    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    experiment_ids = [client.get_experiment_by_name("unlearning").experiment_id]
    models_before = {m.model_id for m in client.search_logged_models(experiment_ids)}
    versions_before = registry.list_versions()
    checkpoints_before = sorted((store["root"] / "artifacts").rglob(WEIGHTS_FILE))
    with sqlite3.connect(database) as conn:
        conn.execute(
            "CREATE TRIGGER refuse_versions BEFORE INSERT ON model_versions "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END"
        )
    conn.close()
    try:
        with pytest.raises(RegistryError, match="registering .* as model .* failed"):
            _register(store, _checkpoint(tmp_path / "refused", seed=7), "refused-key")
    finally:
        with sqlite3.connect(database) as conn:
            conn.execute("DROP TRIGGER refuse_versions")
        conn.close()
    assert registry.list_versions() == versions_before
    assert {m.model_id for m in client.search_logged_models(experiment_ids)} == models_before
    # Its checkpoint is gone from the artifact store too.
    assert sorted((store["root"] / "artifacts").rglob(WEIGHTS_FILE)) == checkpoints_before


def _logged_models(store: dict) -> set[str]:
    client = mlflow.MlflowClient(tracking_uri=store["uri"])
    experiment_ids = [client.get_experiment_by_name("unlearning").experiment_id]
    return {m.model_id for m in client.search_logged_models(experiment_ids)}


def test_a_version_that_failed_registration_is_not_returned_by_the_retry(store: dict, tmp_path: Path) -> None:
    """The registry marked the new version FAILED_REGISTRATION (here a real SQLite trigger sets
    the status a registry backend would): the version, idempotency key and all, used to stay,
    and the retry returned it as the registered one, a version nobody can load."""
    registry: ModelRegistry = store["registry"]
    database = store["uri"].removeprefix("sqlite:///")
    versions_before = registry.list_versions()
    models_before = _logged_models(store)
    checkpoint = _checkpoint(tmp_path / "failing", seed=8)
    with sqlite3.connect(database) as conn:
        conn.execute(
            "CREATE TRIGGER fail_versions AFTER INSERT ON model_versions BEGIN "
            "UPDATE model_versions SET status = 'FAILED_REGISTRATION', status_message = 'copy failed' "
            "WHERE name = NEW.name AND version = NEW.version; END"
        )
    conn.close()
    try:
        with pytest.raises(RegistryError, match=r"version \d+ failed registration"):
            _register(store, checkpoint, "failing-key")
    finally:
        with sqlite3.connect(database) as conn:
            conn.execute("DROP TRIGGER fail_versions")
        conn.close()
    # No broken version is left behind, nor the model logged for it.
    assert registry.list_versions() == versions_before
    assert _logged_models(store) == models_before

    retried = _register(store, checkpoint, "failing-key")
    assert retried not in {v.version for v in versions_before}
    assert registry.get_version(retried).status == "READY"
    assert [v.version for v in registry.list_versions()] == [*(v.version for v in versions_before), retried]


def test_a_version_left_pending_is_replaced_by_the_retry(store: dict, tmp_path: Path) -> None:
    """A try that died while its version was PENDING_REGISTRATION left the version with its
    idempotency key: the retry returned that version, which never becomes READY."""
    registry: ModelRegistry = store["registry"]
    checkpoint = _checkpoint(tmp_path / "pending", seed=9)
    models_before = _logged_models(store)
    stuck = _register(store, checkpoint, "pending-key")
    stuck_model = _logged_models(store) - models_before
    assert len(stuck_model) == 1
    with sqlite3.connect(store["uri"].removeprefix("sqlite:///")) as conn:
        conn.execute(
            "UPDATE model_versions SET status = 'PENDING_REGISTRATION' WHERE name = ? AND version = ?",
            (MODEL_NAME, stuck),
        )
    conn.close()

    retried = _register(store, checkpoint, "pending-key")
    assert retried != stuck
    assert registry.get_version(retried).status == "READY"
    assert stuck not in {v.version for v in registry.list_versions()}
    assert not stuck_model & _logged_models(store)


@pytest.mark.parametrize("status", ["FAILED_REGISTRATION", "PENDING_REGISTRATION"])
def test_a_version_that_is_not_ready_is_not_loaded(store: dict, tmp_path: Path, status: str) -> None:
    """MLflow downloads a version whatever its status: a forget from a champion (or --parent N)
    that was FAILED_REGISTRATION or PENDING_REGISTRATION loaded whatever files it had, a model
    that never finished registering. The refusal names the version, its status and the way out,
    and comes before anything is downloaded."""
    from unsir_pipeline.adapters.registry import VersionNotReady
    from unsir_pipeline.governance.failures import is_bad_input

    registry: ModelRegistry = store["registry"]
    version = _register(store, _checkpoint(tmp_path / "unready", seed=10), f"unready-{status}")
    with sqlite3.connect(store["uri"].removeprefix("sqlite:///")) as conn:
        conn.execute(
            "UPDATE model_versions SET status = ? WHERE name = ? AND version = ?", (status, MODEL_NAME, version)
        )
    conn.close()
    registry.set_alias("unready", version)
    try:
        for ref in (version, str(version), "unready"):
            with pytest.raises(VersionNotReady) as refused:
                registry.load_model(ref, dest=tmp_path / "dl")
            assert str(refused.value).startswith(
                f"model {MODEL_NAME!r} version {version} is {status}, not READY: its registration "
                "failed or never finished, so it has no model to load"
            )
            assert f"registered by run key 'unready-{status}'" in str(refused.value)
            assert "`unsir promote VERSION --reason ...`" in str(refused.value)
            assert is_bad_input(refused.value)  # `unsir` exits 2: the version named is the problem
            assert not (tmp_path / "dl").exists() or not any((tmp_path / "dl").iterdir())
    finally:
        registry.delete_alias("unready")


_HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


_OPEN_REGISTRY = """
import sys
from unsir_pipeline.adapters.registry import ModelRegistry, RegistryError
try:
    ModelRegistry(sys.argv[1], sys.argv[2], "unlearning")
except RegistryError as err:
    print(err)
    sys.exit(3)
"""


def test_a_registry_another_process_holds_locked_names_its_file_and_what_to_do(tmp_path: Path) -> None:
    """`unsir request add`, `forget` or `batch run` while another process holds the SQLite
    registry's write lock said "...: database is locked; expected a readable MLflow database" when
    opening it (as if the file were damaged), and "(sqlite3.OperationalError) database is locked"
    when the lock came mid-run (a request's note too), naming no file and nothing to do."""
    import subprocess
    import sys

    import sqlalchemy
    from mlflow.exceptions import MlflowException

    from unsir_pipeline.adapters.registry import describe_registry_file_fault

    database = tmp_path / "mlflow.db"
    uri = f"sqlite:///{database}"
    registry = ModelRegistry(uri, MODEL_NAME, "unlearning", artifact_location=(tmp_path / "artifacts").as_uri())
    mlflow.MlflowClient(uri, registry_uri=uri).create_registered_model(MODEL_NAME)
    registry.set_model_tag("owner", "ops")
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITE_LOCK, str(database)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        # Opened by a command of its own (this process keeps MLflow's store of the URI open).
        at_open = subprocess.run(
            [sys.executable, "-c", _OPEN_REGISTRY, uri, MODEL_NAME], capture_output=True, text=True, timeout=120
        )
        # Mid-run, MLflow's store raises SQLAlchemy's error as its own (mlflow.store.db.utils), after
        # waiting 20 s; the same error from SQLite, waited for 0.1 s, wrapped as it does.
        engine = sqlalchemy.create_engine(uri, connect_args={"timeout": 0.1})
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql("UPDATE registered_model_tags SET value = 'someone else'")
        except sqlalchemy.exc.OperationalError as err:
            try:
                raise MlflowException(message=err) from err
            except MlflowException as wrapped:
                mid_run = wrapped
        finally:
            engine.dispose()
    finally:
        holder.communicate("")
    assert at_open.returncode == 3, at_open.stderr[-2000:]
    for message in (at_open.stdout, describe_registry_file_fault(mid_run, database)):
        assert message is not None and str(database) in message and "another process" in message, message
        assert "readable MLflow database" not in message and "run the command again" in message, message
    assert describe_registry_file_fault(RuntimeError("database is locked"), database) is None  # not SQLite's own
    assert registry.model_tags()["owner"] == "ops"  # the refused write changed nothing


# A command as its user runs it (`unsir request add`), whose registry another process locks
# once the command is past opening it: the lock is taken as the command first reads the champion.
_LOCKED_MID_RUN = """
import subprocess, sys
from unsir_pipeline.adapters import registry
hold, database, project = sys.argv[1:4]
reads_the_champion = registry.ModelRegistry.resolve_alias
holders = []
def locked_first(self, *args, **kwargs):
    holder = subprocess.Popen([sys.executable, "-c", hold, database], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    holder.stdout.readline()  # "locked"; it holds the lock until this process ends
    holders.append(holder)
    return reads_the_champion(self, *args, **kwargs)
registry.ModelRegistry.resolve_alias = locked_first
sys.argv = ["unsir", "--project", project, *sys.argv[4:], "request", "add", "3", "--by", "ops", "--reason", "test"]
from unsir_pipeline.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_a_registry_locked_mid_run_prints_one_error_line_not_mlflows_traceback(
    bootstrapped_project: Path, tmp_path: Path
) -> None:
    """A command whose registry another process locked mid-run printed about 200 lines of
    MLflow's own log (mlflow.store.db.utils: the SQL statement and a traceback, per attempt)
    above the one `error:` line that names the file and what to do. Now it prints that line
    only (`--debug` keeps the traceback)."""
    import subprocess
    import sys

    from conftest import clone_project

    project = clone_project(bootstrapped_project, tmp_path / "project")
    database = project / "state" / "mlflow" / "mlflow.db"
    done = subprocess.run(
        [sys.executable, "-c", _LOCKED_MID_RUN, _HOLD_WRITE_LOCK, str(database), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr[:3000]
    assert lines[0].startswith(f"error: the MLflow registry's file {database} is locked"), lines[0]


@pytest.mark.slow
def test_a_registry_set_on_the_command_line_and_locked_mid_run_is_the_one_named(
    bootstrapped_project: Path, tmp_path: Path
) -> None:
    """`--set registry.tracking_uri=...` to a registry locked mid-run: the error line named the
    registry of params.yaml (and the environment), which nobody had locked, not the run's own."""
    import shutil
    import subprocess
    import sys

    from conftest import clone_project

    project = clone_project(bootstrapped_project, tmp_path / "project")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(project / "state" / "mlflow", elsewhere)
    database = elsewhere / "mlflow.db"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _LOCKED_MID_RUN,
            _HOLD_WRITE_LOCK,
            str(database),
            str(project),
            "--set",
            f"registry.tracking_uri=sqlite:///{database}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.startswith(f"error: the MLflow registry's file {database} is locked"), done.stderr[-3000:]


def test_a_registry_file_that_may_not_be_written_is_named_with_what_to_do(store: dict) -> None:
    """A batch on a registry file made immutable (`chattr +i`) or read-only said "cannot use the
    project's state files under DIR (...): (raised as a result of Query-invoked autoflush; consider
    using a session.no_autoflush block ...)": SQLAlchemy's advice, and no file. The same error from
    SQLite (a write on a read-only connection to the file), as MLflow's store raises it."""
    import sqlalchemy
    from mlflow.exceptions import MlflowException

    from unsir_pipeline.adapters.registry import describe_registry_file_fault

    database = store["root"] / "mlflow.db"
    engine = sqlalchemy.create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    )
    try:
        with pytest.raises(sqlalchemy.exc.OperationalError) as refused, engine.begin() as conn:
            conn.exec_driver_sql("UPDATE registered_model_tags SET value = 'someone else'")
    finally:
        engine.dispose()
    with pytest.raises(MlflowException) as wrapped:
        raise MlflowException(message=refused.value) from refused.value
    message = describe_registry_file_fault(wrapped.value, database)
    assert message is not None and str(database) in message and "may not be written" in message, message
    assert "attempt to write a readonly database" in message and "autoflush" not in message, message
    assert describe_registry_file_fault(wrapped.value, None) is None  # a registry on a server: MLflow's words
    assert describe_registry_file_fault(refused.value, database) is None  # not MLflow's: a state file's
