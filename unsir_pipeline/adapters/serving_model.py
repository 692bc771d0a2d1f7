"""The pyfunc model MLflow serves: images as the data set gives them in, a label per row out.

Contract (``docs/serving.md``; the MLmodel metadata states it too, and this file checks it):

- input: float32 images in [0, 1], shape (N, C, H, W), exactly as the data set gives them. The
  model normalises them itself with the mean and std of its ``card.json``: a client never needs
  the training statistics.
- output, one row per image: ``label`` (int), ``class_name`` (str) and ``probabilities`` (one
  float per class, summing to 1).
- classes the model has forgotten (``forgotten_classes`` in the card) are never predicted: their
  logits are masked to -inf before the softmax, so their probability is exactly 0 and they can
  never be the argmax.

Logged with MLflow's "models from code": MLflow stores this file's source, not a pickle of
an object, and ``mlflow.models.set_model`` below names the model it defines. Loading it runs
only this file and ``unsir.checkpoint.load_checkpoint``, which reads plain tensors. Only the
core library ``unsir`` ships with the model, so this file imports nothing from the pipeline.
"""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from torch import nn

from unsir.checkpoint import ModelCard, load_checkpoint
from unsir.data import channels_last_error
from unsir.training import predict_logits

OUTPUT_COLUMNS = ("label", "class_name", "probabilities")
# Pixels a little outside [0, 1] are rounding; a batch far outside was normalised already.
_RANGE_SLACK = 1e-3


# Where mlflow.pyfunc.scoring_server's prefix to a model's error message ends (MLflow 3).
_SCORING_SERVER_PREFIX_END = "\nError: "


class ServingInputError(MlflowException, ValueError):
    """Input outside the contract: a ValueError to Python callers, and to MLflow's scoring server
    an MlflowException, which it answers with HTTP 400 and this message (any other exception
    becomes a generic "unexpected error" with the reason left in a stack trace)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    # MLflow's scoring server rewrites the message of an MlflowException raised by a model as
    # "Failed to predict data '<the input's repr>'. \nError: <message>": kilobytes of numbers
    # before the reason. The reason is the answer; what the client sent, it has.
    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, text: str) -> None:
        self._reason = text.rpartition(_SCORING_SERVER_PREFIX_END)[2] if hasattr(self, "_reason") else text


def _clipped(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters: a reason quoting the input (numpy's "could not
    convert string to float: '...'") must not grow with it."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _conversion_hint(shape: tuple[int, ...], expected: tuple[int, int, int]) -> str:
    """What makes a batch of ``shape`` one of ``expected`` (C, H, W) images the way the data set's
    were read (image files converted to RGB, alpha dropped, resized with PIL), or ""."""
    if tuple(shape) == tuple(expected):
        # Grayscale, (1, H, W) is also a batch of one without the channel axis: [image] fits both.
        either = ", or a batch of one grayscale image without the channel axis" if expected[0] == 1 else ""
        return f"; one image without the batch axis{either}: send [image] (numpy: image[None])"
    reshaped = f"images.reshape(-1, {', '.join(map(str, expected))})"
    if len(shape) == 2 and shape[1] == int(np.prod(expected)):
        # scikit-learn's digits.data, or any data frame or CSV of pixel columns, arrives as such rows.
        return f"; one flattened image per row (a data frame or CSV arrives so): send them as {reshaped}"
    if shape == (int(np.prod(expected)),):
        return f"; one flattened image: send it as image.reshape(1, {', '.join(map(str, expected))})"
    if expected[0] == 1 and tuple(shape) == tuple(expected[1:]):
        # One digit as scikit-learn gives it (digits.images[0]): a list of rows, nothing around it.
        return "; one grayscale image without the batch and channel axes: send [[image]] (numpy: image[None, None])"
    if len(shape) == 3 and expected[0] == 1 and tuple(shape[1:]) == tuple(expected[1:]):
        return "; grayscale images without the channel axis: add it (numpy: images[:, None])"
    if len(shape) != 4:
        return ""
    (channels, height, width), hints = shape[1:], []
    if (channels, expected[0]) == (1, 3):
        hints.append(
            "grayscale images: repeat the channel (np.repeat(images, 3, axis=1)), as RGB image files were read"
        )
    elif (channels, expected[0]) == (4, 3):
        hints.append("RGBA images: drop the alpha channel (images[:, :3]), as image files were read")
    elif channels in (3, 4) and expected[0] == 1:
        hints.append("colour images: the model takes one channel (PIL: image.convert('L'))")
    if (height, width) != tuple(expected[1:]):
        hints.append(
            f"resize them to {expected[2]}x{expected[1]} (width x height), the size the model was trained on "
            f"(an image folder's files were resized with PIL: image.resize(({expected[2]}, {expected[1]}), "
            "Image.BILINEAR))"
        )
    return "".join(f"; {hint}" for hint in hints)


# scikit-learn's digits, the one data set whose pixels come as whole numbers 0 to 16; a model
# of another input shape is never sent them.
DIGITS_INPUT_SHAPE = (1, 8, 8)


def _digits_over_255(batch: np.ndarray) -> bool:
    """Whether ``batch`` looks like scikit-learn's digits (whole numbers 0 to 16) divided by 255,
    as 8-bit pixels are: inside [0, 1], answered with wrong labels (every digit a 1) and no error.
    A batch of 8-bit images none of which is brighter than 16/255 is refused with it."""
    if not batch.size or batch.max() <= 0 or batch.min() < 0 or batch.max() > 16 / 255 + 1e-6:
        return False
    levels = batch.astype(np.float64) * 255
    return bool(np.abs(levels - np.round(levels)).max() < 1e-3)


def predict_rows(model: nn.Module, card: ModelCard, images: np.ndarray) -> pd.DataFrame:
    """Label, class name and probabilities for raw images, forgotten classes masked out.

    Every refusal names what was wrong and what was expected in a message of bounded length,
    never the input itself (a batch can hold thousands of images)."""
    expected = f"float32 images of shape (N, {', '.join(map(str, card.input_shape))}) in [0, 1]"
    try:
        batch = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as err:  # ragged nesting, strings, None
        raise ServingInputError(
            f"expected {expected}, got {type(images).__name__} input that is not an array of numbers: "
            f"{_clipped(str(err))}"
        ) from err
    if batch.shape == (0,):  # JSON's [] is an empty batch, with no image shape left to check
        batch = batch.reshape(0, *card.input_shape)
    if batch.ndim != 4 or tuple(batch.shape[1:]) != tuple(card.input_shape):
        channels_last = channels_last_error(batch.shape, card.input_shape)
        hint = _conversion_hint(batch.shape, card.input_shape)
        raise ServingInputError(channels_last or f"expected {expected}, got shape {batch.shape}" + hint)
    finite = np.isfinite(batch).reshape(len(batch), -1).all(axis=1) if batch.size else np.ones(0, dtype=bool)
    if not finite.all():
        bad = np.flatnonzero(~finite).tolist()
        raise ServingInputError(
            # A JSON null is read as NaN: a client that sent null must recognise it here.
            f"expected finite pixel values in [0, 1], got NaN, infinity or null in {len(bad)} image(s) "
            f"of {len(batch)}, at index {bad[:10]}" + (" ..." if len(bad) > 10 else "")
        )
    if batch.size and (batch.min() < -_RANGE_SLACK or batch.max() > 1 + _RANGE_SLACK):
        low, high = float(batch.min()), float(batch.max())
        whole = low >= 0 and np.array_equal(batch, np.round(batch))
        if whole and high <= 16:  # divided by 255, digits' pixels would be [0, 0.063]: wrong answers, no error
            hint = (
                "whole numbers up to 16 look like scikit-learn's digits (load_digits pixels run 0 to 16): "
                "divide them by 16 (8-bit pixels, 0 to 255: by 255)"
            )
        elif whole and high <= 255:
            hint = "whole numbers up to 255 are 8-bit pixels: divide them by 255"
        else:
            hint = "do not normalise: the model applies its own mean and std"
        raise ServingInputError(
            f"expected pixel values in [0, 1] as the data set gives them, got [{low:.3f}, {high:.3f}]; {hint}"
        )
    if card.input_shape == DIGITS_INPUT_SHAPE and _digits_over_255(batch):
        raise ServingInputError(
            f"expected pixel values in [0, 1] as the data set gives them, got [{float(batch.min()):.3f}, "
            f"{float(batch.max()):.3f}], every pixel a whole number up to 16 divided by 255: divide "
            "scikit-learn's digits (0 to 16) by 16, not 255 (8-bit images this dark carry no digit either)"
        )
    x = card.normalization.apply(torch.from_numpy(batch))
    with torch.inference_mode():
        # In batches: one forward pass over the whole request held every layer's activations for
        # every image at once (100,000 digits: 4 GB more; a large batch of bigger images, more).
        logits = (
            predict_logits(model, x, device=torch.device("cpu")) if len(x) else torch.empty(0, len(card.class_names))
        )
        if card.forgotten_classes:
            logits[:, list(card.forgotten_classes)] = float("-inf")
        probabilities = torch.softmax(logits, dim=1)
    labels = probabilities.argmax(dim=1).tolist()
    return pd.DataFrame(
        {
            "label": pd.Series(labels, dtype="int64"),
            "class_name": pd.Series([card.class_names[i] for i in labels], dtype="object"),
            "probabilities": probabilities.double().tolist(),
        }
    )


class CheckpointClassifier(PythonModel):
    """A checkpointed classifier on CPU, in eval mode, behind the contract above."""

    def load_context(self, context: PythonModelContext) -> None:
        self.model, self.card = load_checkpoint(context.artifacts["checkpoint"], device="cpu")

    def predict(self, context: PythonModelContext, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:
        return predict_rows(self.model, self.card, model_input)


mlflow.models.set_model(CheckpointClassifier())
