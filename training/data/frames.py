"""Rows as the DataFrames the MLflow model takes, and a model's answers to such a frame: the MLflow model form's
input and output, shared by the logged version's input example and signature (tracking) and its loader (serving).

NW input: a DataFrame with one column per feature (the file's column names for a user's file, else
x0, x1, ...). MHA input: a DataFrame with a
"sequence" column, each cell a list of steps, each step a list of features (lengths may differ).
S2S input: a DataFrame with a "text" column of strings; output: the decoded strings.
Pixel input: a DataFrame with an "image" column, each cell rows of pixel values (H x W, one channel) or
channels of rows (C x H x W); output: the class labels.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from training.data.datasets import Dataset, as_images, split_texts
from training.nn import NadarayaWatson, PixelModel, Seq2Seq, translate


def to_frame(x: torch.Tensor, lengths: torch.Tensor | None, names: list[str] | None = None) -> pd.DataFrame:
    """Rows of a split as the pyfunc's input DataFrame."""
    if lengths is None:
        return pd.DataFrame(x.numpy().astype(np.float64), columns=names or [f"x{i}" for i in range(x.shape[1])])
    return pd.DataFrame({"sequence": [row[:n].double().tolist() for row, n in zip(x, lengths.tolist())]})


def example_frame(data: Dataset, model: torch.nn.Module | None = None, n: int = 3) -> pd.DataFrame:
    """The first `n` test rows as the pyfunc's input: the logged model's input example and signature."""
    test = data.test.subset(slice(0, n))
    if isinstance(model, PixelModel):
        return pd.DataFrame({"image": [image_cell(image) for image in as_images(test)]})
    if data.kind == "text":
        return pd.DataFrame({"text": split_texts(test, data)[0]})
    return to_frame(test.x, test.lengths, list(getattr(data, "features", ())) or None)  # a file's column names


@torch.no_grad()
def predict_frame(model: torch.nn.Module, frame: pd.DataFrame) -> np.ndarray:
    if isinstance(model, Seq2Seq):
        return np.array([t.text for t in translate(model, [str(s) for s in frame["text"]])], dtype=object)
    if isinstance(model, PixelModel):
        images = [torch.tensor(np.asarray(_plain(cell), dtype=np.float32)) for cell in frame["image"]]
        x = torch.stack([image if image.dim() == 3 else image[None] for image in images])  # (B, C, H, W)
        return labels(model, model(x)[0].argmax(-1))
    if isinstance(model, NadarayaWatson):
        columns = model.config.feature_names
        x = torch.tensor((frame[columns] if columns else frame).to_numpy(dtype=np.float64), dtype=torch.float32)
        out = model(x)[0]
        return labels(model, out.argmax(-1)) if model.config.n_classes else out.numpy()
    sequences = [torch.tensor(np.asarray(_plain(s), dtype=np.float32)) for s in frame["sequence"]]
    lengths = torch.tensor([len(s) for s in sequences])
    x = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)
    out = model(x, lengths)[0]
    return labels(model, out.argmax(-1)) if model.config.task == "classification" else out.numpy()


def image_cell(image: torch.Tensor) -> list:
    """One image (C, H, W) as a frame cell: rows of pixels for one channel, else channels of rows."""
    return (image[0] if image.shape[0] == 1 else image).double().tolist()


def _plain(cell) -> list:
    """A cell as nested lists: MLflow may hand over numpy arrays (of arrays) where a list was logged."""
    if hasattr(cell, "tolist"):
        cell = cell.tolist()
    return [_plain(c) for c in cell] if isinstance(cell, (list, tuple)) else cell


def labels(model: torch.nn.Module, index: torch.Tensor) -> np.ndarray:
    """Class indices as the file's labels (the indices themselves for built-in data sets)."""
    names = model.config.class_labels
    return np.asarray([names[i] for i in index.tolist()]) if names else index.numpy()
