"""Rows as the DataFrames the MLflow model takes, and a model's answers to one: the MLflow model form's input and
output, shared by the logged version's input example and signature (tracking) and its loader (serving). Each
kind's frame form is its `DataFamily`'s (`training/data/families.py`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from training.data.families import FAMILIES, data_family_of
from training.data.splits import Dataset


def example_frame(data: Dataset, model: torch.nn.Module | None = None, n: int = 3) -> pd.DataFrame:
    """The first `n` test rows as the pyfunc's input: the logged model's input example and signature."""
    test = data.test.subset(slice(0, n))
    if model is not None:
        return data_family_of(model).example_frame(test, data)
    return next(f for f in FAMILIES.values() if f.data == data.kind).example_frame(test, data)  # the data's own form


@torch.no_grad()
def predict_frame(model: torch.nn.Module, frame: pd.DataFrame) -> np.ndarray:
    return data_family_of(model).predict_frame(model, frame)
