"""The MLflow model form of a checkpoint: the loader module of every version registered since the registry
carries data, not code.

A registered version holds its checkpoint (`data/checkpoint.pt`), MLflow's metadata, an input example and a
signature; no Python. `mlflow.pyfunc.load_model` imports this module, installed with the project, and calls
`_load_pyfunc` with the checkpoint's path: weights and config JSON read with `weights_only`, nothing executed.
The input and output frames are `training.data.frames`. Versions logged before (a model-from-code file and a
copy of the package under `code/`) still load through what they carry.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from training.data.frames import predict_frame
from training.nn import load_checkpoint


class CheckpointModel:
    """A loaded checkpoint answering MLflow's `predict`."""

    def __init__(self, model: torch.nn.Module, metadata: dict) -> None:
        self.model, self.metadata = model, metadata

    def predict(self, model_input: pd.DataFrame, params: dict | None = None) -> np.ndarray:
        return predict_frame(self.model, model_input)


def _load_pyfunc(data_path: str) -> CheckpointModel:
    """MLflow's loader entry: `data_path` is the version's checkpoint file."""
    model, metadata = load_checkpoint(data_path)
    return CheckpointModel(model, metadata)
