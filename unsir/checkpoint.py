"""Model checkpoints as plain tensors plus a JSON card: loading one never runs stored code.

A checkpoint is a directory holding ``weights.safetensors`` (parameters and buffers) and
``card.json`` (architecture name and arguments, normalisation, class names, classes forgotten
so far). ``load_checkpoint`` rebuilds the architecture from the card and loads the tensors.

A checkpoint's identity is the SHA-256 of its weights file (:func:`weights_sha256`): whoever
stores a checkpoint records it, and whoever loads one passes it as ``expected_sha256``, so a
bit-flipped or truncated file is refused, naming both digests, before any tensor is read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from unsir.errors import UnlearningInputError
from unsir.models import ModelSpec, build_model
from unsir.splits import Normalization

WEIGHTS_FILE = "weights.safetensors"
CARD_FILE = "card.json"
_CHUNK = 1 << 20


class CheckpointIntegrityError(UnlearningInputError):
    """A checkpoint's weights are not the ones that were recorded, or cannot be read at all."""


@dataclass(frozen=True)
class ModelCard:
    """What a model is, beyond its weights: enough to rebuild and to use it correctly."""

    spec: ModelSpec
    normalization: Normalization
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int]
    forgotten_classes: tuple[int, ...] = field(default=())

    def to_dict(self) -> dict:
        return {
            "spec": self.spec.to_dict(),
            "normalization": {"mean": list(self.normalization.mean), "std": list(self.normalization.std)},
            "class_names": list(self.class_names),
            "input_shape": list(self.input_shape),
            "forgotten_classes": list(self.forgotten_classes),
        }

    @classmethod
    def from_dict(cls, raw: dict) -> ModelCard:
        return cls(
            spec=ModelSpec.from_dict(raw["spec"]),
            normalization=Normalization(tuple(raw["normalization"]["mean"]), tuple(raw["normalization"]["std"])),
            class_names=tuple(raw["class_names"]),
            # Written by to_dict from a (channels, height, width) shape.
            input_shape=cast(tuple[int, int, int], tuple(int(v) for v in raw["input_shape"])),
            forgotten_classes=tuple(int(c) for c in raw.get("forgotten_classes", ())),
        )

    def with_forgotten(self, classes: tuple[int, ...]) -> ModelCard:
        """A card for the unlearned model: the union of earlier and new forgotten classes."""
        merged = tuple(sorted(set(self.forgotten_classes) | set(classes)))
        return ModelCard(self.spec, self.normalization, self.class_names, self.input_shape, merged)


def save_checkpoint(directory: str | Path, model: nn.Module, card: ModelCard) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # safetensors refuses shared or non-contiguous storage: store independent copies.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(directory / WEIGHTS_FILE))
    (directory / CARD_FILE).write_text(json.dumps(card.to_dict(), indent=2, sort_keys=True) + "\n")
    return directory


def weights_sha256(directory: str | Path) -> str:
    """SHA-256 (hex) of a checkpoint's weights file, read in chunks."""
    digest = hashlib.sha256()
    with open(Path(directory) / WEIGHTS_FILE, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def load_checkpoint(
    directory: str | Path,
    *,
    device: torch.device | str = "cpu",
    expected_sha256: str | None = None,
    label: str | None = None,
) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from a checkpoint directory.

    With ``expected_sha256`` the weights file is hashed first and refused on any difference;
    ``label`` (e.g. "model digits version 3") names the checkpoint in that error. A file that
    safetensors cannot parse is a :class:`CheckpointIntegrityError` too, not a parser error.
    """
    directory = Path(directory)
    weights, card_path = directory / WEIGHTS_FILE, directory / CARD_FILE
    name = label or repr(str(directory))
    if not weights.is_file() or not card_path.is_file():
        raise UnlearningInputError(
            f"{name} is not a checkpoint; expected {WEIGHTS_FILE} and {CARD_FILE} in {str(directory)!r}"
        )
    if expected_sha256 is not None:
        found = weights_sha256(directory)
        if found != expected_sha256:
            raise CheckpointIntegrityError(
                f"{name}: weights file {str(weights)!r} has sha256 {found}, but {expected_sha256} was "
                f"recorded ({weights.stat().st_size} bytes now); the file was altered or truncated "
                "after it was stored, refusing to load it"
            )
    card = ModelCard.from_dict(json.loads(card_path.read_text()))
    model = build_model(card.spec)
    try:
        tensors = load_file(str(weights))
    except SafetensorError as err:
        raise CheckpointIntegrityError(
            f"{name}: weights file {str(weights)!r} is not a readable safetensors file ({err}); truncated or corrupted?"
        ) from err
    model.load_state_dict(tensors, strict=True)
    return model.to(device).eval(), card
