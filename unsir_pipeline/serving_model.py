"""The pyfunc wrapper MLflow serves: a safetensors checkpoint in, class probabilities out.

Logged with MLflow's "models from code": MLflow stores this file's source, not a pickle of
an object, and ``mlflow.models.set_model`` below names the model it defines. Loading it runs
only this file and ``unsir.checkpoint.load_checkpoint``, which reads plain tensors.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel, PythonModelContext

from unsir.checkpoint import load_checkpoint


class CheckpointClassifier(PythonModel):
    """Softmax over a checkpointed classifier's logits, on CPU, in eval mode."""

    def load_context(self, context: PythonModelContext) -> None:
        self.model, self.card = load_checkpoint(context.artifacts["checkpoint"], device="cpu")

    def predict(
        self, context: PythonModelContext, model_input: np.ndarray, params: dict | None = None
    ) -> np.ndarray:
        """``model_input`` is a float32 batch (N, C, H, W) already normalised with the card's stats."""
        batch = np.asarray(model_input, dtype=np.float32)
        expected = tuple(self.card.input_shape)
        if batch.ndim != 4 or tuple(batch.shape[1:]) != expected:
            raise ValueError(
                f"expected a batch of shape (N, {', '.join(map(str, expected))}), got {batch.shape}"
            )
        with torch.inference_mode():
            logits = self.model(torch.from_numpy(batch))
        return torch.softmax(logits, dim=1).numpy()


mlflow.models.set_model(CheckpointClassifier())
