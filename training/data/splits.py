"""Splits and data sets, the types every layer reads: a split's inputs, targets and valid lengths, and a data set's
three splits with what it is (task, classes, vocabularies). The built-in data sets are `datasets.py`.

Tabular sets give x (N, D); sequence sets give zero-padded x (N, T, D) with valid lengths (N,); text
(translation) sets give zero-padded character ids x (N, T) with lengths (N,) and target ids y (N, T_out).
A sequence set whose sequences all have the same length T is also a set of one-channel T x D images (`as_images`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from training.nn.seq2seq import target_text


@dataclass(frozen=True)
class Split:
    x: Tensor  # (N, D) or (N, T, D), or (N, T) character ids
    y: Tensor  # (N,) float targets or long class labels, or (N, T_out) target ids
    lengths: Tensor | None = None  # (N,) valid steps for sequences

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, index: Tensor) -> Split:
        return Split(self.x[index], self.y[index], None if self.lengths is None else self.lengths[index])

    def to(self, device: torch.device | str) -> Split:
        lengths = None if self.lengths is None else self.lengths.to(device)
        return Split(self.x.to(device), self.y.to(device), lengths)


@dataclass(frozen=True)
class Dataset:
    name: str
    task: str  # "regression" | "classification" | "translation"
    train: Split
    val: Split
    test: Split
    n_classes: int = 0
    standardize: bool = True  # fit feature/target scalers on train
    source_vocab: tuple[str, ...] = ()  # translation: the characters of inputs and of outputs
    target_vocab: tuple[str, ...] = ()

    @property
    def kind(self) -> str:
        if self.task == "translation":
            return "text"
        return "sequence" if self.train.lengths is not None else "tabular"

    @property
    def in_features(self) -> int:
        return len(self.source_vocab) if self.kind == "text" else self.train.x.shape[-1]

    def describe(self) -> dict[str, object]:
        return {
            "name": self.name,
            "task": self.task,
            "kind": self.kind,
            "in_features": self.in_features,
            "n_train": len(self.train),
            "n_val": len(self.val),
            "n_test": len(self.test),
            "n_classes": self.n_classes,
        }


def split_texts(split: Split, data: Dataset) -> tuple[list[str], list[str]]:
    """A translation split back as strings: (inputs, targets)."""
    sources = [
        "".join(data.source_vocab[i - 1] for i in row[:n]) for row, n in zip(split.x.tolist(), split.lengths.tolist())
    ]
    return sources, [target_text(row, list(data.target_vocab)) for row in split.y.tolist()]


def as_images(split: Split) -> Tensor:
    """A split's inputs as images (N, C, H, W): sequences of one length T with D features are 1 x T x D images."""
    if split.x.dim() == 4:
        return split.x
    if split.lengths is None or split.x.dim() != 3 or bool((split.lengths != split.x.shape[1]).any()):
        raise ValueError("only sequences that all have the same length are images")
    return split.x[:, None]  # (N, 1, T, D)


def valid_steps(lengths: Tensor, n_steps: int) -> Tensor:
    """Which padded steps are real: (N, T) booleans."""
    return torch.arange(n_steps)[None, :] < lengths[:, None]  # (N, T)
