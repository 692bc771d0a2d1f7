"""What ``unsir serve`` runs under uvicorn: MLflow's own scoring app for one registered version
(``mlflow.pyfunc.scoring_server``, as ``mlflow models serve`` runs it), behind a check of the
request body that MLflow parses before the model's code runs.

MLflow answers a body in a shape it does not expect in words that name neither the bad value nor
what the model takes; this check answers it first, HTTP 400 in MLflow's own error format,
naming both. Every other request reaches MLflow's app as it came. The check lives in the server,
not in the model's code, so it holds for every version served, those registered before it too.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import os
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST
from mlflow.pyfunc import PyFuncModel, scoring_server

# The model URI the server loads, set by ``unsir serve`` (uvicorn's factory takes no arguments).
MODEL_URI_VARIABLE = "UNSIR_SERVE_MODEL_URI"
# The top-level keys of MLflow's JSON scoring protocol, in the order the docs give them.
INPUT_KEYS = ("inputs", "instances", "dataframe_split", "dataframe_records")


def expected_input(model: PyFuncModel) -> str:
    """The served model's input in words, from its MLmodel metadata (``serving_metadata``)."""
    shape = (model.metadata.metadata or {}).get("input_shape")
    if not shape:
        return "the input its MLmodel metadata states"
    return f"float32 images of shape (N, {', '.join(map(str, shape[1:]))}) in [0, 1]"


def _key_problem(keys: list[str], expected: str) -> str | None:
    """Why a body with these top-level keys is not one MLflow's protocol accepts, or None."""
    unknown = [key for key in keys if key not in (*INPUT_KEYS, scoring_server.SERVING_PARAMS_KEY)]
    inputs = [key for key in keys if key in INPUT_KEYS]
    if not unknown and len(inputs) == 1:
        return None
    accepted, hint = ", ".join(repr(key) for key in INPUT_KEYS), ""
    if unknown:
        got = f"unknown key(s) {unknown!r}"
        close = difflib.get_close_matches(unknown[0], INPUT_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
    elif inputs:
        got = f"several input keys {inputs!r}"
    else:
        got = "no input key"
    return (
        f"{got} in the request body{hint}; expected a JSON object with exactly one of {accepted}, "
        f'as {{"inputs": <{expected}>}}'
    )


def request_problem(body: bytes, expected: str) -> str | None:
    """Why MLflow would answer this JSON body without naming its problem, or None to let it
    answer. A body that is not a JSON object is left to MLflow, whose answer says so."""
    try:
        payload: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(payload, dict):
        return None
    return _key_problem(list(payload), expected)


class CheckedRequests:
    """ASGI middleware: a JSON ``POST /invocations`` whose ``request_problem`` is not None is
    answered 400 with it; everything else goes to ``app`` unchanged."""

    def __init__(self, app: Any, expected: str) -> None:
        self.app, self.expected = app, expected

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if not (scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/invocations"):
            return await self.app(scope, receive, send)
        content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
        if content_type.split(";")[0].strip() != scoring_server.CONTENT_TYPE_JSON:
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        # In a thread, as MLflow parses it: a large body must not stop the server answering /ping.
        problem = await asyncio.to_thread(request_problem, body, self.expected)
        if problem is not None:
            error = MlflowException(problem, error_code=BAD_REQUEST)
            await send(
                {
                    "type": "http.response.start",
                    "status": error.get_http_status_code(),
                    "headers": [(b"content-type", b"application/json")],
                }
            )
            return await send({"type": "http.response.body", "body": error.serialize_as_json().encode()})

        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        return await self.app(scope, replay, send)


def checked_app(model: PyFuncModel) -> CheckedRequests:
    """MLflow's scoring app for ``model`` behind the request check."""
    return CheckedRequests(scoring_server.init(model), expected_input(model))


def create_app() -> CheckedRequests:
    """uvicorn's factory (``--factory``): the version ``UNSIR_SERVE_MODEL_URI`` names."""
    return checked_app(scoring_server.load_model_with_mlflow_config(os.environ[MODEL_URI_VARIABLE]))
