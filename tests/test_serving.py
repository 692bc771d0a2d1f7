"""The serving contract: raw [0, 1] images in; label, class name and probabilities out;
forgotten classes never predicted. Then MLflow's real scoring server, started by `unsir serve`,
against a registered model, following the champion alias when it moves."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import clone_project

from unsir.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from unsir.models import ModelSpec, build_model
from unsir.splits import Normalization, select
from unsir_pipeline.adapters.registry import serving_metadata, serving_signature
from unsir_pipeline.adapters.serving_model import predict_rows


@pytest.fixture(scope="module")
def digits_card(digits, digits_splits) -> ModelCard:
    return ModelCard(ModelSpec("small_cnn", 10, 1), digits_splits.normalization, digits.class_names, digits.input_shape)


def _own_labels(model, card: ModelCard, images: np.ndarray) -> np.ndarray:
    """What the checkpoint itself predicts: logits of the normalised images, forgotten masked."""
    with torch.inference_mode():
        logits = model(card.normalization.apply(torch.from_numpy(images)))
        logits[:, list(card.forgotten_classes)] = float("-inf")
        return logits.argmax(1).numpy()


def test_raw_images_in_labels_names_and_probabilities_out(trained_digits_model, digits, digits_card):
    images = digits.images[:64].numpy()
    rows = predict_rows(trained_digits_model, digits_card, images)
    assert list(rows.columns) == ["label", "class_name", "probabilities"]
    assert rows["label"].tolist() == _own_labels(trained_digits_model, digits_card, images).tolist()
    assert rows["class_name"].tolist() == [digits.class_names[i] for i in rows["label"]]
    probabilities = np.array(rows["probabilities"].tolist())
    assert probabilities.shape == (64, 10) and np.allclose(probabilities.sum(1), 1)
    # Raw pixels are what it was trained on once normalised: it reads digits right.
    assert (rows["label"].to_numpy() == digits.labels[:64].numpy()).mean() > 0.9


def test_a_large_batch_goes_through_the_model_in_bounded_batches(trained_digits_model, digits, digits_card):
    """One forward pass over a whole request held every layer's activations for every image at
    once: 100,000 digits took 4 GB more memory, and a request of larger images runs out of it."""
    from unsir.training import inference_batch_size

    images = digits.images[:300].numpy()
    seen: list[int] = []
    hook = trained_digits_model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    try:
        rows = predict_rows(trained_digits_model, digits_card, images)
    finally:
        hook.remove()
    assert sum(seen) == 300 and max(seen) <= inference_batch_size(torch.device("cpu"))
    assert rows["label"].tolist() == _own_labels(trained_digits_model, digits_card, images).tolist()


def test_forgotten_classes_are_never_predicted(trained_digits_model, digits, digits_card):
    images = digits.images[:200].numpy()
    plain = predict_rows(trained_digits_model, digits_card, images)
    assert (plain["label"] == 3).sum() > 5  # the mask below has something to change
    card = replace(digits_card, forgotten_classes=(3,))
    masked = predict_rows(trained_digits_model, card, images)
    assert 3 not in set(masked["label"])
    assert all(p[3] == 0.0 for p in masked["probabilities"])
    unchanged = plain["label"] != 3
    assert masked["label"][unchanged].tolist() == plain["label"][unchanged].tolist()


def test_normalised_or_misshapen_input_is_refused_naming_the_contract(trained_digits_model, digits, digits_card):
    normalised = digits_card.normalization.apply(digits.images[:4]).numpy()
    with pytest.raises(ValueError, match=r"pixel values in \[0, 1\].*do not normalise"):
        predict_rows(trained_digits_model, digits_card, normalised)
    eight_bit = (digits.images[:4].numpy() * 255).round().astype(np.uint8)
    with pytest.raises(ValueError, match=r"got \[0\.000, 255\.000\]; whole numbers up to 255 are 8-bit pixels"):
        predict_rows(trained_digits_model, digits_card, eight_bit)


def test_scikit_learn_digits_pixels_are_refused_with_their_own_scale(trained_digits_model, digits_card):
    """load_digits' images run 0 to 16: the refusal said to divide them by 255, which is accepted
    (pixels in [0, 0.063]) and answered with wrong labels."""
    from sklearn.datasets import load_digits

    raw = load_digits().images[:4, None]
    with pytest.raises(ValueError, match=r"got \[0\.000, 16\.000\]; whole numbers up to 16 .* divide them by 16"):
        predict_rows(trained_digits_model, digits_card, raw)


def test_scikit_learn_digits_divided_by_255_are_refused_not_answered(trained_digits_model, digits_card):
    """load_digits' 0-16 pixels divided by 255, as 8-bit images are, fall in [0, 0.063]: the model
    answered them, every one of 200 test digits as a 1 (11% accuracy), with no error."""
    from sklearn.datasets import load_digits

    raw = load_digits().images[:200, None]
    with pytest.raises(
        ValueError,
        match=re.escape("got [0.000, 0.063], every pixel a whole number up to 16 divided by 255")
        + r".*"
        + re.escape("divide scikit-learn's digits (0 to 16) by 16, not 255"),
    ):
        predict_rows(trained_digits_model, digits_card, (raw / 255).astype(np.float32))
    # What the contract takes still passes: the same digits divided by 16, a blank image, and
    # 8-bit pixels divided by 255 with one brighter than 16.
    assert len(predict_rows(trained_digits_model, digits_card, (raw / 16).astype(np.float32))) == 200
    assert len(predict_rows(trained_digits_model, digits_card, np.zeros((1, 1, 8, 8), np.float32))) == 1
    eight_bit = (raw[:1] / 16 * 255).round() / 255
    assert len(predict_rows(trained_digits_model, digits_card, eight_bit.astype(np.float32))) == 1


def test_dark_images_of_a_model_that_does_not_read_8x8_digits_are_answered():
    """The divided-by-255 refusal is about scikit-learn's digits: a colour model's batch of
    dark 8-bit images (every pixel at most 16/255) is answered, not told to divide by 16."""
    card = ModelCard(ModelSpec("small_cnn", 2, 3), Normalization.fit(torch.rand(4, 3, 32, 32)), ("a", "b"), (3, 32, 32))
    dark = (np.arange(2 * 3 * 32 * 32).reshape(2, 3, 32, 32) % 17 / 255).astype(np.float32)
    assert len(predict_rows(build_model(card.spec), card, dark)) == 2


def test_flattened_or_channelless_digits_are_refused_with_the_reshape(trained_digits_model, digits, digits_card):
    """scikit-learn's digits.data, a data frame or a CSV of 64 pixel columns is (N, 64), and its
    digits.images (N, 8, 8): the refusal said only 'got shape (4, 64)', not what makes them fit."""
    flat = digits.images[:4].reshape(4, 64).numpy()
    with pytest.raises(
        ValueError,
        match=re.escape("got shape (4, 64); one flattened image per row")
        + r".*"
        + re.escape("send them as images.reshape(-1, 1, 8, 8)"),
    ):
        predict_rows(trained_digits_model, digits_card, flat)
    with pytest.raises(ValueError, match=re.escape("got shape (4, 8, 8); grayscale images without the channel axis")):
        predict_rows(trained_digits_model, digits_card, digits.images[:4, 0].numpy())
    # One image's 64 values, {"inputs": [0.0, 0.31, ...]}: the refusal said only "got shape (64,)".
    with pytest.raises(
        ValueError, match=re.escape("got shape (64,); one flattened image: send it as image.reshape(1, 1, 8, 8)")
    ):
        predict_rows(trained_digits_model, digits_card, flat[0])


def test_one_digit_without_batch_or_channel_axis_is_refused_with_the_reshape(trained_digits_model, digits, digits_card):
    """One 8x8 digit as scikit-learn gives it (digits.images[0] / 16, {"inputs": [[0.0, 0.31, ...], ...]}):
    the refusal said only 'got shape (8, 8)', not what makes it fit."""
    with pytest.raises(
        ValueError,
        match=re.escape("got shape (8, 8); one grayscale image without the batch and channel axes: send [[image]]")
        + r".*"
        + re.escape("(numpy: image[None, None])"),
    ):
        predict_rows(trained_digits_model, digits_card, digits.images[0, 0].numpy())


def test_a_batch_of_one_digit_without_the_channel_axis_is_told_so(trained_digits_model, digits, digits_card):
    """digits.images[:1] / 16 is (1, 8, 8), a batch of one without the channel axis; the refusal
    called it only 'one image without the batch axis', which a client that sent a batch of one does
    not recognise (a batch of two is told 'grayscale images without the channel axis')."""
    with pytest.raises(
        ValueError,
        match=re.escape(
            "got shape (1, 8, 8); one image without the batch axis, or a batch of one grayscale image without "
            "the channel axis: send [image] (numpy: image[None])"
        ),
    ):
        predict_rows(trained_digits_model, digits_card, digits.images[:1, 0].numpy())


def test_channels_last_images_are_refused_naming_the_order(trained_digits_model, digits, digits_card):
    # (N, 8, 8, 1), as numpy and PIL keep images, is told apart from any other wrong shape.
    channels_last = digits.images[:4].permute(0, 2, 3, 1).numpy()
    expected = re.escape("look channels-last (N, H, W, C); expected (N, C, H, W) = (4, 1, 8, 8)")
    with pytest.raises(ValueError, match=expected):
        predict_rows(trained_digits_model, digits_card, channels_last)


def test_channels_last_rgb_is_refused_and_a_square_ambiguous_shape_is_not_called_so():
    from unsir.data import channels_last_error

    assert "channels-last" in channels_last_error((2, 32, 32, 3), (3, 32, 32))
    assert channels_last_error((2, 3, 32, 32), (3, 32, 32)) is None  # the expected order
    assert channels_last_error((2, 32, 3, 32), (3, 32, 32)) is None  # wrong, but not channels-last
    assert channels_last_error((2, 4, 8, 4), (4, 4, 8)) is None  # C == H: (H, W, C) is also (C, H', W')


@pytest.mark.parametrize(
    ("shape", "hint"),
    [
        ((2, 1, 32, 32), r"grayscale images: repeat the channel \(np\.repeat\(images, 3, axis=1\)\)"),
        ((2, 4, 32, 32), r"RGBA images: drop the alpha channel \(images\[:, :3\]\)"),
        ((2, 3, 64, 48), r"resize them to 32x32 \(width x height\), the size the model was trained on"),
        ((3, 32, 32), r"one image without the batch axis: send \[image\] \(numpy: image\[None\]\)"),
    ],
)
def test_an_image_of_another_mode_or_size_is_refused_with_the_conversion_training_made(shape, hint):
    """A user of an RGB image folder sends a grayscale, RGBA or larger PNG: the refusal said only
    'expected ... (N, 3, 32, 32) ..., got shape (2, 1, 32, 32)', not what training did to such a file."""
    torch.manual_seed(0)
    card = ModelCard(ModelSpec("small_cnn", 2, 3), Normalization.fit(torch.rand(4, 3, 32, 32)), ("a", "b"), (3, 32, 32))
    with pytest.raises(ValueError, match=r"expected float32 images of shape \(N, 3, 32, 32\).*; " + hint):
        predict_rows(build_model(card.spec), card, np.zeros(shape, dtype=np.float32))


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_images_with_nan_or_infinity_are_refused_naming_them(trained_digits_model, digits, digits_card, value):
    # NaN passed the range check (every comparison with NaN is false) and came back as label 0
    # with NaN probabilities.
    images = digits.images[:4].numpy().copy()
    images[2, 0, 3, 3] = value
    with pytest.raises(ValueError, match=r"finite pixel values.*1 image\(s\) of 4, at index \[2\]"):
        predict_rows(trained_digits_model, digits_card, images)


def _scoring_server_answer(model, card: ModelCard, payload: dict):
    """What MLflow's scoring server answers ``payload`` with (its JSON parsing included), for a
    pyfunc model that calls ``predict_rows``; a refusal is raised as the MlflowException it
    turns into an HTTP error."""
    from mlflow.pyfunc.scoring_server import invocations

    class Served:  # what the scoring server calls: the pyfunc model's predict
        metadata = None

        def predict(self, data, params=None):
            return predict_rows(model, card, data)

    return invocations(json.dumps(payload), "application/json", Served(), None)


def test_a_refused_batch_reaches_an_http_client_as_400_with_the_reason(trained_digits_model, digits, digits_card):
    from mlflow.exceptions import MlflowException

    eight_bit = (digits.images[:2].numpy() * 255).round()
    with pytest.raises(MlflowException) as info:
        _scoring_server_answer(trained_digits_model, digits_card, {"inputs": eight_bit.tolist()})
    assert info.value.get_http_status_code() == 400
    assert "expected pixel values in [0, 1]" in info.value.message


def test_an_empty_batch_is_answered_with_no_rows(trained_digits_model, digits_card):
    """An empty batch in JSON is [], shape (0,): it was refused as 'got shape (0,)', where the
    same empty batch from Python, (0, 1, 8, 8), gets no rows."""
    answer = _scoring_server_answer(trained_digits_model, digits_card, {"inputs": []})
    assert (answer.status, json.loads(answer.response)) == (200, {"predictions": []})


def test_a_null_pixel_is_refused_as_such(trained_digits_model, digits, digits_card):
    """MLflow reads a JSON null as NaN: the refusal named only 'NaN or infinity', which a client
    that sent null does not recognise."""
    from mlflow.exceptions import MlflowException

    images = digits.images[:3].numpy().tolist()
    images[1][0][2][5] = None
    with pytest.raises(MlflowException, match=re.escape("got NaN, infinity or null in 1 image(s) of 3, at index [1]")):
        _scoring_server_answer(trained_digits_model, digits_card, {"inputs": images})


def test_signature_states_labelled_rows_and_the_metadata_raw_images(digits_card):
    signature = serving_signature()
    # No declared input: MLflow would check it first and quote the whole input in its refusal.
    assert signature.inputs is None
    assert signature.outputs.input_names() == ["label", "class_name", "probabilities"]
    metadata = serving_metadata(digits_card)
    assert metadata["input_shape"] == [-1, 1, 8, 8] and "[0, 1]" in metadata["input"]


# --- MLflow's real scoring server -------------------------------------------------------------


@pytest.fixture(scope="module")
def served_project(tmp_path_factory, bootstrapped_project) -> Path:
    return clone_project(bootstrapped_project, tmp_path_factory.mktemp("serving") / "project")


def _post(port: int, images: np.ndarray) -> list[dict]:
    body = json.dumps({"inputs": images.tolist()}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def _described(port: int) -> dict:
    """What the server says it serves (GET /model)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/model", timeout=60) as response:
        return json.loads(response.read())


def _post_json(port: int, payload: dict) -> tuple[int, dict]:
    """The status and JSON answer of the server to ``payload``, an error included."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _next_event(process: subprocess.Popen, kind: str) -> dict:
    """The supervisor's next JSON event of ``kind`` (it prints one per line)."""
    for line in process.stdout:
        event = json.loads(line)
        if event["event"] == kind:
            return event
    raise AssertionError(f"`unsir serve` exited (code {process.wait()}) before reporting {kind!r}")


def _session_processes(session: int) -> list[str]:
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            alive.append(stat.parent.name)
    return alive


@pytest.mark.slow
def test_unsir_serve_answers_like_the_checkpoint_and_follows_the_alias(served_project):
    from unsir_pipeline.adapters.prepared_data import load_prepared
    from unsir_pipeline.adapters.registry import registry_for
    from unsir_pipeline.adapters.serving import free_port
    from unsir_pipeline.governance.promotion import FORGOTTEN_TAG, VERIFIED_TAG
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(served_project)
    registry = registry_for(ws)
    data, manifest = load_prepared(ws)
    images_t, labels_t = select(data, manifest[manifest["split"] == "test"].head(60))
    images = images_t.numpy()
    model, card = load_checkpoint(ws.original_model_dir)

    port = free_port()
    # PATH without the environment's bin: the supervisor must find uvicorn on its own.
    env = {**os.environ, "PATH": "/usr/bin:/bin", "UNSIR_PROGRESS": "0"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "unsir_pipeline.cli",
            "--project",
            str(served_project),
            "serve",
            "--port",
            str(port),
            "--poll",
            "1",
            "--json",
        ],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    sessions = [server.pid]  # the supervisor's session, then each scoring server's own
    try:
        first = _next_event(server, "serving")
        assert first["version"] == 1
        sessions.append(first["pid"])
        answers = _post(port, images)
        described = _described(port)
        assert (described["version"], described["forgotten_classes"]) == (1, [])
        assert [a["label"] for a in answers] == _own_labels(model, card, images).tolist()
        assert [a["class_name"] for a in answers] == [card.class_names[a["label"]] for a in answers]
        assert np.allclose([sum(a["probabilities"]) for a in answers], 1)
        assert (np.array([a["label"] for a in answers]) == labels_t.numpy()).mean() > 0.9  # raw pixels read right
        # The server's check of the request body (scoring_app) answers before MLflow's parsing.
        refused = _post_json(port, {"input": images[:2].tolist()})
        assert refused[0] == 400 and "unknown key(s) ['input'] in the request body" in refused[1]["message"]

        # Version 2: the same weights whose card forgets class 3; the champion alias moves to it.
        forgetting = served_project / "state" / "v2-checkpoint"
        save_checkpoint(forgetting, model, card.with_forgotten((3,)))
        with registry.start_run(run_name="serving-test"):
            version = registry.register_checkpoint(
                forgetting, input_example=images[:2], tags={FORGOTTEN_TAG: "[3]"}, idempotency_key="serving-test-v2"
            )
        registry.set_alias(ws.params.registry.champion_alias, version)
        moved = _next_event(server, "alias-moved")
        assert (moved["from_version"], moved["to_version"]) == (1, version)
        second = _next_event(server, "serving")
        assert second["version"] == version
        sessions.append(second["pid"])
        assert _session_processes(first["pid"]) == []  # the old server was stopped, workers and all
        after = [a["label"] for a in _post(port, images)]
        described = _described(port)
        assert (described["version"], described["forgotten_classes"]) == (version, ["3"])
        assert 3 in [a["label"] for a in answers] and 3 not in after
        assert after == _own_labels(model, card.with_forgotten((3,)), images).tolist()

        # The alias moved back around the gate (the MLflow UI): version 1 still knows class 3,
        # which the promoted version forgot. It is served, and the supervisor says what it undid.
        registry.set_version_tags(version, {"gate_decision": "promoted", VERIFIED_TAG: "[3]"})
        registry.set_alias(ws.params.registry.champion_alias, 1)
        back = _next_event(server, "serving")
        sessions.append(back["pid"])
        warning = _next_event(server, "warning")
        assert back["version"] == warning["version"] == 1
        assert f"class 3 (forgotten by version {version})" in warning["reason"]
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(timeout=60)
    assert code == 128 + signal.SIGTERM
    assert [pid for session in sessions for pid in _session_processes(session)] == []  # servers and workers too


@pytest.mark.slow
def test_unsir_serve_neither_starts_nor_switches_to_a_version_that_is_not_ready(tmp_path, bootstrapped_project):
    """MLflow's scoring app loads a version whatever its status: `unsir serve` served a champion
    alias moved in MLflow onto a version left FAILED_REGISTRATION, and switched to one when the
    alias moved onto it while serving, taking a working model out of production."""
    import sqlite3

    from unsir_pipeline.adapters.registry import VersionNotReady, registry_for
    from unsir_pipeline.adapters.serving import Supervisor, free_port, text_report
    from unsir_pipeline.settings.workspace import Workspace

    project = clone_project(bootstrapped_project, tmp_path / "project")
    ws = Workspace.load(project)
    registry = registry_for(ws)
    champion = ws.params.registry.champion_alias
    served = registry.resolve_alias(champion)
    with registry.start_run(run_name="failed-registration"):
        failed = registry.register_checkpoint(
            ws.original_model_dir,
            input_example=torch.rand(2, 1, 8, 8).numpy(),
            tags={},
            idempotency_key="failed-registration",
        )
    with sqlite3.connect(ws.registry_database) as conn:  # what a backend sets when the copy fails
        conn.execute(
            "UPDATE model_versions SET status = 'FAILED_REGISTRATION' WHERE name = ? AND version = ?",
            (ws.params.registry.model_name, failed),
        )
    conn.close()
    events: list[dict] = []

    # Refused before any server starts (`unsir serve` exits 2: VersionNotReady is bad input).
    registry.set_alias(champion, failed)
    with pytest.raises(VersionNotReady, match=f"version {failed} is FAILED_REGISTRATION, not READY"):
        Supervisor(ws, champion, free_port(), poll_s=0.2, startup_s=120, report=events.append).follow(iterations=0)
    assert events == []

    # Serving, the alias moves onto it: the served version stays, and the stream says so once.
    registry.set_alias(champion, served)

    def report(event: dict) -> None:
        events.append(event)
        if event["event"] == "serving":
            registry.set_alias(champion, failed)

    Supervisor(ws, champion, free_port(), poll_s=0.2, startup_s=120, report=report).follow(iterations=3)
    assert [e["event"] for e in events] == ["serving", "not-switched", "stopped"]
    assert events[0]["version"] == events[1]["version"] == events[2]["version"] == served
    refused = events[1]
    assert (refused["alias"], refused["to_version"]) == (champion, failed)
    assert refused["reason"].startswith(
        f"model {ws.params.registry.model_name!r} version {failed} is FAILED_REGISTRATION"
    )
    assert text_report(refused).endswith(f"; still serving version {served}")


def _docs_block(language: str, containing: str) -> str:
    """The fenced ``language`` block of docs/serving.md that contains ``containing``."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "serving.md").read_text()
    blocks = [b for b in re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL) if containing in b]
    assert len(blocks) == 1, f"{len(blocks)} {language} blocks in docs/serving.md contain {containing!r}"
    return blocks[0]


def test_the_curl_example_in_the_serving_docs_is_a_digit_the_model_reads(trained_digits_model, digits_card):
    """Copied verbatim, the docs' curl body ('[[[[0.0, 0.31, ...], ... 8 rows ... ]]]') was no
    JSON: the server answered 'the request body is not JSON (Expecting value at line 1, column 61)'."""
    from unsir_pipeline.adapters.scoring_app import Accepted, request_problem

    block = _docs_block("bash", "/invocations")
    body = re.search(r"-d '(.*?)'", block, re.DOTALL)
    assert body is not None, block
    shown = re.search(r"# (\{\"predictions\".*)", block)
    assert shown is not None, block
    answer = json.loads(shown.group(1).replace(", ...", ""))
    accepted = Accepted("float32 images of shape (N, 1, 8, 8) in [0, 1]", "1, 8, 8", ())
    assert request_problem(body.group(1).encode(), accepted) is None
    rows = predict_rows(trained_digits_model, digits_card, np.asarray(json.loads(body.group(1))["inputs"]))
    expected = answer["predictions"][0]
    assert (rows["label"].tolist(), rows["class_name"].tolist()) == ([expected["label"]], [expected["class_name"]])


@pytest.mark.slow
def test_the_python_example_in_the_serving_docs_runs_verbatim_in_a_project(tmp_path, bootstrapped_project):
    """Run from a project's directory, the docs' `mlflow.pyfunc.load_model("models:/...@champion")`
    asked MLflow's default store (./mlflow.db, which it created) and failed: 'Registered Model with
    name=unsir-classifier not found'; its `images` were never defined."""
    project = clone_project(bootstrapped_project, tmp_path / "project")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    result = subprocess.run(
        [sys.executable, "-c", _docs_block("python", "mlflow.pyfunc.load_model")],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    labels = [line.split()[1] for line in result.stdout.strip().splitlines()[1:]]
    assert labels == ["0", "1", "2", "3", "4"], result.stdout
    assert not (project / "mlflow.db").exists()


_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAEklEQVR4nGNgGAWjYBSMAggAAAQIAAFFmV4FAAAAAElFTkSuQmCC"


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ([_PNG], 'inputs[0] is the JSON string "iVBORw0KGgoAAAANSUhEUgAAAAgAAA... (a base64-encoded PNG file), '),
        ([f"data:image/png;base64,{_PNG}"], 'inputs[0] is the JSON string "data:image/png;base64,iVBORw0K... (a '),
        (_PNG, 'inputs is the JSON string "iVBORw0KGgoAAAANSUhEUgAAAAgAAA... (a base64-encoded PNG file), not a'),
    ],
    ids=["in-a-list", "data-url", "alone"],
)
def test_a_base64_encoded_image_file_under_inputs_is_told_to_send_its_pixels(inputs, named):
    """A client sending a PNG file encoded in base64 (as image APIs take it) was told only
    'inputs[0] is the JSON string "iVBORw0K...", not a number': nothing said the server reads
    pixels, not files, nor how to get them from the file."""
    from unsir_pipeline.adapters.scoring_app import Accepted, request_problem

    accepted = Accepted("float32 images of shape (N, 1, 8, 8) in [0, 1]", "1, 8, 8", ())
    problem = request_problem(json.dumps({"inputs": inputs}).encode(), accepted)
    assert problem is not None and problem.startswith(named), problem
    assert problem.endswith(
        "(an image file's pixels: numpy.asarray(PIL.Image.open(file)), in (C, H, W) order, (1, 8, 8), "
        "divided by 255; docs/serving.md, 'Image files')"
    ), problem
    # A string that is no encoded image is still named as before, with no such hint.
    plain = request_problem(json.dumps({"inputs": [[[["0.5"] * 8] * 8]]}).encode(), accepted)
    assert plain is not None and "base64" not in plain and "PIL" not in plain, plain


def test_get_model_names_the_alias_being_served(served_project):
    """GET /model named the version but not the alias `unsir serve` follows: a client of a server
    started with --alias challenger could not tell it from the champion's."""
    from unsir_pipeline.adapters.serving import server_environment
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(served_project)
    # The app `unsir serve` runs, in the environment it runs it with (a process of its own, as
    # uvicorn's factory is): MLflow's registry URI is the process's own.
    ask = (
        "from starlette.testclient import TestClient; "
        "from unsir_pipeline.adapters.scoring_app import create_app; "
        "print(TestClient(create_app()).get('/model').text)"
    )
    for alias in ("champion", "original"):
        env = server_environment(ws, ws.params.registry.model_name, 1, alias)
        answer = subprocess.run(
            [sys.executable, "-c", ask], env=env, cwd=served_project, capture_output=True, text=True, check=False
        )
        assert answer.returncode == 0, answer.stderr[-2000:]
        described = json.loads(answer.stdout.strip().splitlines()[-1])
        assert (described["alias"], described["version"]) == (alias, 1), described
