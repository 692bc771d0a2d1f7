"""What ``unsir serve`` runs under uvicorn: MLflow's own scoring app for one registered version
(``mlflow.pyfunc.scoring_server``, as ``mlflow models serve`` runs it), behind a check of the
request body that MLflow parses before the model's code runs.

MLflow answers a body in a shape it does not expect in words that name neither the bad value nor
what the model takes (a body without a Content-Type, with HTTP 500); this check answers it first,
HTTP 400 (415 for the content type) in MLflow's own error format, naming both. Every other
request reaches MLflow's app as it came. The check lives in the server, not in the model's code,
so it holds for every version served, those registered before it too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import difflib
import json
import os
import re
import reprlib
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from itertools import chain
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.pyfunc import PyFuncModel, scoring_server

# The model URI the server loads, set by ``unsir serve`` (uvicorn's factory takes no arguments),
# and the registry alias that named that version, which ``unsir serve`` follows.
MODEL_URI_VARIABLE = "UNSIR_SERVE_MODEL_URI"
ALIAS_VARIABLE = "UNSIR_SERVE_ALIAS"
# The top-level keys of MLflow's JSON scoring protocol, in the order the docs give them.
INPUT_KEYS = ("inputs", "instances", "dataframe_split", "dataframe_records")
# Those this model takes: MLflow makes a data frame of the others, and no table carries images.
IMAGE_KEYS = ("inputs", "instances")


@dataclass(frozen=True)
class Accepted:
    """What the served model takes: its input in words, one image's shape ("C, H, W" where the
    metadata states it) and the names of its params."""

    input: str
    image: str
    params: tuple[str, ...]

    @classmethod
    def of(cls, model: PyFuncModel) -> Accepted:
        """From the model's MLmodel metadata (``serving_metadata``) and its signature's params."""
        shape = (model.metadata.metadata or {}).get("input_shape")
        image = ", ".join(map(str, shape[1:])) if shape else "C, H, W"
        words = f"float32 images of shape (N, {image}) in [0, 1]" if shape else "the input its MLmodel metadata states"
        schema = model.metadata.get_params_schema()
        return cls(words, image, tuple(param.name for param in schema.params) if schema else ())


# What `unsir serve` answers at GET /model, and the header naming the version on every answer:
# MLflow's own GET /version is MLflow's version, and nothing else it answers names the model.
DESCRIBE_PATH = "/model"
VERSION_HEADER = b"model-version"


def describe(model: PyFuncModel, model_uri: str | None, alias: str | None = None) -> dict[str, Any]:
    """The served version (from ``model_uri``, ``models:/NAME/VERSION``), the registry alias
    that named it (None when served without one), its classes and the classes it forgot (never
    predicted), from its MLmodel metadata (``serving_metadata``)."""
    metadata = model.metadata.metadata or {}
    names = list(metadata.get("class_names") or [])
    forgotten = [int(label) for label in metadata.get("forgotten_classes") or []]
    match = re.fullmatch(r"models:/([^/@]+)/(\d+)", model_uri or "")
    return {
        "name": match.group(1) if match else None,
        "alias": alias,
        "version": int(match.group(2)) if match else None,
        "model_uri": model_uri,
        "class_names": names,
        "forgotten_classes": [names[label] if label < len(names) else str(label) for label in forgotten],
        "forgotten_labels": forgotten,
        "input": Accepted.of(model).input,
    }


def _key_problem(keys: list[str], expected: str) -> str | None:
    """Why a body with these top-level keys is not one MLflow's protocol accepts, or None."""
    unknown = [key for key in keys if key not in (*INPUT_KEYS, scoring_server.SERVING_PARAMS_KEY)]
    inputs = [key for key in keys if key in INPUT_KEYS]
    if not unknown and len(inputs) == 1:
        return None
    accepted, hint = ", ".join(repr(key) for key in IMAGE_KEYS), ""
    if unknown:
        got = f"unknown key(s) {unknown!r}"
        close = difflib.get_close_matches(unknown[0], IMAGE_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    elif inputs:
        got = f"several input keys {inputs!r}"
    else:
        got = "no input key"
    return (
        f"{got} in the request body{hint}; expected a JSON object with exactly one of {accepted}, "
        f'as {{"inputs": <{expected}>}}'
    )


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return "an object" if isinstance(value, dict) else "a single value"


def _first_shape(batch: list) -> list[int]:
    """The lengths of the nested lists of ``batch``'s first element, outermost first."""
    reference, element = [], batch[0] if batch else None
    while isinstance(element, list):
        reference.append(len(element))
        element = element[0] if element else None
    return reference


def _ragged_at(batch: list, name: str) -> str | None:
    """Where the nested lists of ``batch`` first stop having the shape of its first element, or
    None. MLflow makes the batch an array before the model sees it, and refuses a ragged one
    naming only numpy's 'inhomogeneous shape after 3 dimensions'."""
    reference = _first_shape(batch)

    def mismatch(value: Any, at: tuple[int, ...]) -> tuple[tuple[int, ...], Any] | None:
        depth = len(at) - 1
        if depth == len(reference):  # where the first image has a pixel
            return (at, value) if isinstance(value, list) else None
        if not isinstance(value, list) or len(value) != reference[depth]:
            return at, value
        for index, item in enumerate(value):
            if (found := mismatch(item, (*at, index))) is not None:
                return found
        return None

    for index, image in enumerate(batch):
        if (found := mismatch(image, (index,))) is not None:
            at, value = found
            first = batch
            for _ in at:
                first = first[0]
            where, there = "".join(f"[{i}]" for i in at), "[0]" * len(at)
            return f"{name} is ragged: {name}{where} is {_kind(value)} where {name}{there} is {_kind(first)}"
    return None


def _params_problem(params: Any, accepted: tuple[str, ...]) -> str | None:
    """Why these params are not the model's, or None. MLflow drops params a model does not
    declare with a warning in the server's log only, and answers as if none were sent."""
    if params in (None, {}):
        return None
    takes = (
        f"expected an object with some of {list(accepted)!r}"
        if accepted
        else "this model takes no params: send the body without 'params'"
    )
    if not isinstance(params, dict):
        return f"params {reprlib.repr(params)} in the request body; {takes}"
    if unknown := [name for name in params if name not in accepted]:
        return f"unknown params {reprlib.repr(unknown)} in the request body; {takes}"
    return None


def _from_table(accepted: Accepted) -> str:
    """How a client holding a table of pixel columns makes the images this model takes."""
    images = f"table.to_numpy().reshape(-1, {accepted.image}).tolist()"
    return f'(a table of pixel columns in (C, H, W) order: {{"inputs": {images}}})'


def content_type_problem(content_type: str | None, body: bytes, accepted: Accepted) -> str | None:
    """Why this model cannot take ``body`` with ``content_type``, or None: MLflow reads it as
    JSON (the header parsed as its ``invocations`` parses it). MLflow answered a type it does not
    read 415 in plain text, and a request without the header with HTTP 500. A CSV or parquet body
    it reads into a data frame, one flattened image per row, which the model refuses: no table
    carries the images' shape."""
    expected = (
        f'expected Content-Type {scoring_server.CONTENT_TYPE_JSON!r}, with a body {{"inputs": <{accepted.input}>}}'
    )
    if content_type is None:
        return f"no Content-Type header in the request; {expected}"
    mime, *parameters = (part.strip() for part in content_type.split(";"))
    if mime == scoring_server.CONTENT_TYPE_JSON:
        pairs = dict(parameter.partition("=")[::2] for parameter in parameters)
        if pairs.keys() <= {"charset"} and pairs.get("charset", "utf-8").lower() == "utf-8":
            return None
        return (
            f"Content-Type {content_type!r}: the server reads JSON in UTF-8, with no parameter but "
            f"charset=utf-8; {expected}"
        )
    got = f"Content-Type {content_type!r}"
    if mime == "application/x-www-form-urlencoded":
        got += " (curl -d sends it unless given -H 'Content-Type: application/json')"
    if body.lstrip()[:1] == b"{":  # a JSON object: what this server takes, under another header
        return f"{got} on a JSON body (only the header is wrong); {expected}"
    if mime in (scoring_server.CONTENT_TYPE_CSV, scoring_server.CONTENT_TYPE_PARQUET):
        table = "a table, one flattened image per row, which this model does not take"
        return f"{got}: {table}; {expected} {_from_table(accepted)}"
    if mime.startswith("image/") or mime == "multipart/form-data":
        # A PNG posted as it is, or uploaded as a form's file (curl -F): its pixels are what the model takes.
        sent = "an image file" if mime.startswith("image/") else "a form upload (curl -F)"
        return f"{got}: {sent}, which this server does not read; {expected} {_file_pixels(accepted)}"
    return f"{got}, which this server does not read; {expected}"


def _file_pixels(accepted: Accepted) -> str:
    """How to make an image file what this model takes (its pixels), in parentheses."""
    return (
        f"(an image file's pixels: numpy.asarray(PIL.Image.open(file)), in (C, H, W) order, ({accepted.image}), "
        "divided by 255; docs/serving.md, 'Image files')"
    )


# The first bytes of the image files a client may encode in base64, as image APIs take them.
_FILE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def _encoded_image(value: Any) -> str | None:
    """``value``'s file type when it is a string holding an image file in base64 (a ``data:``
    URL included), or None. Such a string under ``inputs`` is a file, not pixels."""
    if not isinstance(value, str):
        return None
    text = re.sub(r"^data:image/[\w.+-]*;base64,", "", value.strip())
    try:
        head = base64.b64decode(text[:24], validate=True)  # 18 bytes, without decoding the whole file
    except (binascii.Error, ValueError):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WebP"
    return next((kind for signature, kind in _FILE_SIGNATURES.items() if head.startswith(signature)), None)


def _as_file(value: Any, accepted: Accepted) -> tuple[str, str]:
    """What to add after the value named and after the refusal when ``value`` is an encoded image."""
    kind = _encoded_image(value)
    return (f" (a base64-encoded {kind} file)", f" {_file_pixels(accepted)}") if kind else ("", "")


def request_problem(body: bytes, accepted: Accepted) -> str | None:
    """Why MLflow would answer this JSON body without naming its problem, or None to let it
    answer. MLflow answers a body that is not JSON with the whole body quoted after its parser's
    error, and one that is not an object without saying what the model takes."""
    expected = accepted.input
    as_inputs = f'expected a JSON object, as {{"inputs": <{expected}>}}'
    if not body.strip():
        return f"the request body is empty; {as_inputs}"
    try:
        payload: Any = json.loads(body)
    except json.JSONDecodeError as err:
        return f"the request body is not JSON ({err.msg} at line {err.lineno}, column {err.colno}); {as_inputs}"
    except ValueError as err:  # bytes that are not UTF-8 (UnicodeDecodeError)
        return f"the request body is not JSON ({err}); {as_inputs}"
    except RecursionError:  # lists nested about a thousand deep: an HTTP 500 if let through
        return f"the request body nests lists or objects too deep to parse; {as_inputs}"
    if not isinstance(payload, dict):
        kind = {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(type(payload), "number")
        hint = " (a list of images goes under 'inputs')" if isinstance(payload, list) else ""
        return f"the request body is a JSON {kind}, not an object; {as_inputs}{hint}"
    problem = _key_problem(list(payload), expected) or _params_problem(
        payload.get(scoring_server.SERVING_PARAMS_KEY), accepted.params
    )
    if problem is not None:
        return problem
    key = next(key for key in payload if key in INPUT_KEYS)
    if key not in IMAGE_KEYS:
        return f"{key!r} sends a data frame, which this model does not take; {as_inputs} {_from_table(accepted)}"
    batch = payload[key]
    if not isinstance(batch, list):  # MLflow made it a 0-d array: the model said 'got shape ()'
        named, pixels = _as_file(batch, accepted)
        return (
            f"{key} is the JSON {_json_text(batch)}{named}, not a list of images; expected {expected}, "
            f"as [image, ...]{pixels}"
        )
    ragged = _ragged_at(batch, key)
    if ragged is not None:
        return f"{ragged}; expected {expected}, every image of the same shape"
    not_a_number = _not_a_number(batch, key)
    if not_a_number is not None:
        where, value = not_a_number
        named, pixels = _as_file(value, accepted)
        return f"{where}{named}, not a number; expected {expected}, every pixel a JSON number{pixels}"
    return _not_finite(batch)


# What JSON's numbers parse to; null is NaN to MLflow, which _not_finite names.
_NUMBERS = {int, float, type(None)}
_JSON_TYPES = {str: "string", bool: "boolean", dict: "object"}


def _json_text(value: Any) -> str:
    """``value``'s JSON type and, but for null, the value itself, cut to 32 characters."""
    if value is None:
        return "null"
    kind = _JSON_TYPES.get(type(value), "number")
    text = json.dumps(value, ensure_ascii=False)
    return f"{kind} {text if len(text) <= 32 else text[:31] + '...'}"


def _not_a_number(batch: list, name: str) -> tuple[str, Any] | None:
    """Which pixel of ``batch`` (not ragged) is first not a JSON number, with its place, and its
    value, or None.
    The model's float32 conversion read a string "0.5" as 0.5 and true as 1.0, and answered them."""
    shape = (len(batch), *_first_shape(batch))

    def pixels() -> Iterator[Any]:
        flat: Iterator[Any] = iter(batch)
        for _ in shape[1:]:
            flat = chain.from_iterable(flat)
        return flat

    # Every pixel's type, in C (0.2 s of CPU for 100,000 digits): Python runs per pixel only to
    # find the one to name.
    if set(map(type, pixels())) <= _NUMBERS:
        return None
    first = next(index for index, kind in enumerate(map(type, pixels())) if kind not in _NUMBERS)
    at = tuple(int(i) for i in np.unravel_index(first, shape))
    value: Any = batch
    for index in at:
        value = value[index]
    return f"{name}{''.join(f'[{i}]' for i in at)} is the JSON {_json_text(value)}", value


def _not_finite(batch: list) -> str | None:
    """Which images of ``batch`` hold a NaN, an infinity or a null (MLflow reads null as NaN), in
    the model's words, or None. A version registered before the model refused them answered such
    an image with a label (class 0, NaN probabilities)."""
    try:
        # float64, as JSON's numbers parse: float32 would make a finite 1e39 infinity.
        pixels = np.asarray(batch, dtype=np.float64)
    except OverflowError:  # a JSON integer of 309 digits or more: it raised, an HTTP 500
        bad = [index for index, image in enumerate(batch) if _too_large(image)]
        return (
            f"expected finite pixel values in [0, 1], got a whole number too large for a float in {len(bad)} "
            f"image(s) of {len(batch)}, at index {bad[:10]}" + (" ..." if len(bad) > 10 else "")
        )
    except (TypeError, ValueError):  # none expected once _not_a_number passed: the model's to name
        return None
    if pixels.size == 0:
        return None
    finite = np.isfinite(pixels.reshape(len(pixels), -1)).all(axis=1)
    if finite.all():
        # The model makes them float32, where a finite 1e39 becomes infinity: named here as it is.
        huge = (np.abs(pixels.reshape(len(pixels), -1)) > np.finfo(np.float32).max).any(axis=1)
        if not huge.any():
            return None
        bad = np.flatnonzero(huge).tolist()
        return (
            f"expected finite pixel values in [0, 1], got values beyond float32's range (over 3.4e38) in "
            f"{len(bad)} image(s) of {len(batch)}, at index {bad[:10]}" + (" ..." if len(bad) > 10 else "")
        )
    bad = np.flatnonzero(~finite).tolist()
    return (
        f"expected finite pixel values in [0, 1], got NaN, infinity or null in {len(bad)} image(s) of "
        f"{len(batch)}, at index {bad[:10]}" + (" ..." if len(bad) > 10 else "")
    )


def _too_large(image: Any) -> bool:
    """Whether ``image`` holds an integer too large for a float."""
    try:
        np.asarray(image, dtype=np.float64)
    except OverflowError:
        return True
    return False


async def _answer(send: Any, status: int, body: str) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body.encode()})


async def _refuse(send: Any, status: int, problem: str) -> None:
    """Answer ``status`` with ``problem`` in MLflow's error format (its error_code BAD_REQUEST)."""
    await _answer(send, status, MlflowException(problem, error_code=BAD_REQUEST).serialize_as_json())


def _with_header(send: Any, name: bytes, value: bytes) -> Any:
    """``send`` adding the header ``name: value`` to the response's start."""

    async def sending(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (name, value)]}
        await send(message)

    return sending


class CheckedRequests:
    """ASGI middleware: a ``POST /invocations`` whose ``content_type_problem`` is not None is
    answered 415 with it (as MLflow answers a type it does not read), one whose
    ``request_problem`` is not None 400; ``GET /model`` is answered with ``description``; every
    answer carries the served version in a ``model-version`` header (when known); everything else
    goes to ``app`` unchanged."""

    def __init__(self, app: Any, accepted: Accepted, description: dict[str, Any] | None = None) -> None:
        self.app, self.accepted, self.description = app, accepted, description or {}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        version = self.description.get("version")
        if version is not None:
            send = _with_header(send, VERSION_HEADER, str(version).encode())
        if scope["method"] == "GET" and scope["path"] == DESCRIBE_PATH:
            return await _answer(send, HTTPStatus.OK, json.dumps(self.description))
        if not (scope["method"] == "POST" and scope["path"] == "/invocations"):
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        header = dict(scope["headers"]).get(b"content-type")
        content_type = None if header is None else header.decode("latin-1")
        if (problem := content_type_problem(content_type, body, self.accepted)) is not None:
            return await _refuse(send, HTTPStatus.UNSUPPORTED_MEDIA_TYPE, problem)
        # In a thread, as MLflow parses it: a large body must not stop the server answering /ping.
        problem = await asyncio.to_thread(request_problem, body, self.accepted)
        if problem is not None:
            return await _refuse(send, HTTPStatus.BAD_REQUEST, problem)

        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def checked_app(model: PyFuncModel, model_uri: str | None = None, alias: str | None = None) -> CheckedRequests:
    """MLflow's scoring app for ``model`` (loaded from ``model_uri``, named by ``alias``) behind
    the request check."""
    return CheckedRequests(scoring_server.init(model), Accepted.of(model), describe(model, model_uri, alias))


def create_app() -> CheckedRequests:
    """uvicorn's factory (``--factory``): the version ``UNSIR_SERVE_MODEL_URI`` names, which
    ``UNSIR_SERVE_ALIAS`` pointed at."""
    uri = os.environ[MODEL_URI_VARIABLE]
    return checked_app(scoring_server.load_model_with_mlflow_config(uri), uri, os.environ.get(ALIAS_VARIABLE))
