"""The data layer's part of each model kind, beside its `Family` in `training/nn`: the data it takes, how a model is
prepared on the training split, a split as the predictor's inputs, and the MLflow model form's frames.

Frames (the MLflow model's input and output; `frames.py` is their public face):
- NW: a DataFrame with one column per feature (the file's column names for a user's file, else x0, x1, ...);
  output: the predictions, or the class labels.
- MHA: a DataFrame with a "sequence" column, each cell a list of steps, each step a list of features (lengths
  may differ); output: the predictions, or the class labels.
- S2S: a DataFrame with a "text" column of strings; output: the decoded strings.
- Pixel: a DataFrame with an "image" column, each cell rows of pixel values (H x W, one channel) or channels of
  rows (C x H x W); output: the class labels.
Every frame is answered through the family's predictor, as the handler and `make score` answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from training.data.splits import Dataset, Split, as_images, split_texts, valid_steps
from training.nn import Family, Inputs, family_of, nadaraya_watson, pixel, seq2seq, sequence_model, translate


@dataclass(frozen=True)
class DataFamily:
    family: Family  # the kind's torch-only part
    data: str  # the data it takes: "tabular", "sequence", "text" or "image" (`datasets.KINDS`)
    file: str | None  # what a user's file must hold for it ("tabular" or "sequence"); None: no file holds its data
    prepare: Callable[[nn.Module, Dataset], None]  # scalers (and NW's memory) from the training split
    inputs: Callable[[Split], Inputs]  # a split's inputs as the predictor takes them
    example_frame: Callable[[Split, Dataset], pd.DataFrame]  # rows of a split as the model form's input
    predict_frame: Callable[[nn.Module, pd.DataFrame], np.ndarray]  # the model form's answer to a frame

    @property
    def name(self) -> str:
        return self.family.name


# helpers


def standardize(model: nn.Module, data: Dataset) -> None:
    """Fit the feature scaler on the training split's rows (or valid steps), and the target scaler for regression."""
    if not data.standardize:
        return
    train = data.train
    steps = train.x if train.lengths is None else train.x[valid_steps(train.lengths, train.x.shape[1])]
    model.x_scaler.fit(steps)
    if data.task == "regression":
        model.y_scaler.fit(train.y)


def trimmed(split: Split) -> Inputs:
    """Sequences or texts without the padding beyond the longest."""
    T = int(split.lengths.max())
    return Inputs(split.x[:, :T], split.lengths)


def to_frame(x: torch.Tensor, lengths: torch.Tensor | None, names: list[str] | None = None) -> pd.DataFrame:
    """Rows of a split as the model form's input DataFrame."""
    if lengths is None:
        return pd.DataFrame(x.numpy().astype(np.float64), columns=names or [f"x{i}" for i in range(x.shape[1])])
    return pd.DataFrame({"sequence": [row[:n].double().tolist() for row, n in zip(x, lengths.tolist())]})


def rows_frame(test: Split, data: Dataset) -> pd.DataFrame:
    return to_frame(test.x, test.lengths, list(getattr(data, "features", ())) or None)  # a file's column names


def image_cell(image: torch.Tensor) -> list:
    """One image (C, H, W) as a frame cell: rows of pixels for one channel, else channels of rows."""
    return (image[0] if image.shape[0] == 1 else image).double().tolist()


def plain(cell) -> list:
    """A cell as nested lists: MLflow may hand over numpy arrays (of arrays) where a list was logged."""
    if hasattr(cell, "tolist"):
        cell = cell.tolist()
    return [plain(c) for c in cell] if isinstance(cell, (list, tuple)) else cell


def labels(model: nn.Module, index: torch.Tensor) -> np.ndarray:
    """Class indices as the file's labels (the indices themselves for built-in data sets)."""
    names = model.config.class_labels
    return np.asarray([names[i] for i in index.tolist()]) if names else index.numpy()


# Nadaraya-Watson: rows


def prepare_nw(model: nn.Module, data: Dataset) -> None:
    """Scalers, and the training set as the model's memory (a file's rows: prototypes name their nearest by row)."""
    standardize(model, data)
    rows = getattr(data, "rows", {}).get("train")
    model.set_memory(data.train.x, data.train.y, rows if rows is not None and len(rows) == len(data.train) else None)


def predict_nw_frame(model: nn.Module, frame: pd.DataFrame) -> np.ndarray:
    columns = model.config.feature_names
    x = torch.tensor((frame[columns] if columns else frame).to_numpy(dtype=np.float64), dtype=torch.float32)
    out = nadaraya_watson.FAMILY.predict(model, Inputs(x)).out
    return labels(model, out.argmax(-1)) if model.config.n_classes else out.numpy()


NW = DataFamily(
    nadaraya_watson.FAMILY,
    "tabular",
    "tabular",
    prepare_nw,
    lambda split: Inputs(split.x),
    rows_frame,
    predict_nw_frame,
)


# multi-head attention: sequences


def predict_mha_frame(model: nn.Module, frame: pd.DataFrame) -> np.ndarray:
    sequences = [torch.tensor(np.asarray(plain(s), dtype=np.float32)) for s in frame["sequence"]]
    lengths = torch.tensor([len(s) for s in sequences])
    x = torch.nn.utils.rnn.pad_sequence(sequences, batch_first=True)
    out = sequence_model.FAMILY.predict(model, Inputs(x, lengths)).out
    return labels(model, out.argmax(-1)) if model.config.task == "classification" else out.numpy()


MHA = DataFamily(sequence_model.FAMILY, "sequence", "sequence", standardize, trimmed, rows_frame, predict_mha_frame)


# seq2seq: texts


def no_preparation(model: nn.Module, data: Dataset) -> None:
    """Texts are character ids: nothing to standardize."""


def texts_frame(test: Split, data: Dataset) -> pd.DataFrame:
    return pd.DataFrame({"text": split_texts(test, data)[0]})


def predict_s2s_frame(model: nn.Module, frame: pd.DataFrame) -> np.ndarray:
    return np.array([t.text for t in translate(model, [str(s) for s in frame["text"]])], dtype=object)


# A file's sequences are what `make tune` asks of files for every model but NW and pixel.
S2S = DataFamily(seq2seq.FAMILY, "text", "sequence", no_preparation, trimmed, texts_frame, predict_s2s_frame)


# pixel self-attention: images


def prepare_pixel(model: nn.Module, data: Dataset) -> None:
    model.x_scaler.fit(as_images(data.train).movedim(1, -1))  # per channel, over every pixel


def images_frame(test: Split, data: Dataset) -> pd.DataFrame:
    return pd.DataFrame({"image": [image_cell(image) for image in as_images(test)]})


def predict_pixel_frame(model: nn.Module, frame: pd.DataFrame) -> np.ndarray:
    images = [torch.tensor(np.asarray(plain(cell), dtype=np.float32)) for cell in frame["image"]]
    x = torch.stack([image if image.dim() == 3 else image[None] for image in images])  # (B, C, H, W)
    return labels(model, pixel.FAMILY.predict(model, Inputs(x)).out.argmax(-1))


PIXEL = DataFamily(
    pixel.FAMILY,
    "image",
    None,
    prepare_pixel,
    lambda split: Inputs(as_images(split)),
    images_frame,
    predict_pixel_frame,
)


# the table

FAMILIES: dict[str, DataFamily] = {family.name: family for family in (NW, MHA, S2S, PIXEL)}


def family(name: str) -> DataFamily:
    """The data layer's part of the kind called `name`."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model kind {name!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[name]


def data_family_of(model: nn.Module) -> DataFamily:
    return FAMILIES[family_of(model).name]
