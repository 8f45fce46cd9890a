"""Data sets: seeded, deterministic, with fixed train / validation / test splits (`splits.py`).

Tabular sets give x (N, D); sequence sets give zero-padded x (N, T, D) with valid lengths (N,); text
(translation) sets give zero-padded character ids x (N, T) with lengths (N,) and target ids y (N, T_out).
A sequence set whose sequences all have the same length T is also a set of one-channel T x D images
(`as_images`): `digits` is 8 rows of 8 pixels for the MHA model and a 1 x 8 x 8 image for the pixel
model, the same rows in the same splits, so the two compare.
Splits hold raw values; standardization is fitted on train only and lives in the model's buffers
(`prepare_model`), so a served model takes raw inputs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from training.data import dates
from training.data.families import data_family_of
from training.data.splits import Dataset, Split
from training.data.splits import as_images as as_images  # read here by the layers above
from training.data.splits import split_texts as split_texts
from training.nn.seq2seq import source_ids, target_ids

# Which data each data set is (a model kind takes one: `DataFamily.data` in training/data/families.py).
KINDS = {
    "sine": ("tabular",),
    "diabetes": ("tabular",),
    "adding": ("sequence",),
    "digits": ("sequence", "image"),  # fixed-length sequences: also images (`as_images`)
    "dates": ("text",),
}


# helpers


def sine_truth(x: Tensor) -> Tensor:
    return 2 * torch.sin(x) + x**0.8


def _split_indices(n: int, fractions: tuple[float, float], generator: torch.Generator) -> tuple[Tensor, ...]:
    """A seeded permutation cut into train / validation / test."""
    order = torch.randperm(n, generator=generator)
    n_train, n_val = int(n * fractions[0]), int(n * fractions[1])
    return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def _random_splits(name: str, x: Tensor, y: Tensor, seed: int, task: str, **kwargs) -> Dataset:
    train, val, test = _split_indices(len(x), (0.6, 0.2), torch.Generator().manual_seed(seed))
    full = Split(x, y, kwargs.pop("lengths", None))
    return Dataset(name, task, full.subset(train), full.subset(val), full.subset(test), **kwargs)


# data sets


def load_sine(seed: int = 0, n_train: int = 50, n_val: int = 50) -> Dataset:
    """The reference experiment: sorted x ~ U(0, 5), y = 2 sin x + x^0.8 + N(0, 0.5^2); test grid vs truth."""
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> Split:
        x, _ = torch.sort(torch.rand(n, generator=g) * 5)
        return Split(x[:, None], sine_truth(x) + 0.5 * torch.randn(n, generator=g))

    train, val = draw(n_train), draw(n_val)
    grid = torch.arange(0, 5, 0.1)
    test = Split(grid[:, None], sine_truth(grid))
    return Dataset("sine", "regression", train, val, test, standardize=False)


def load_diabetes(seed: int = 0) -> Dataset:
    """scikit-learn's bundled diabetes regression set (442 x 10)."""
    from sklearn.datasets import load_diabetes as sk_diabetes

    bunch = sk_diabetes(scaled=False)
    x = torch.tensor(bunch.data, dtype=torch.float32)
    y = torch.tensor(bunch.target, dtype=torch.float32)
    return _random_splits("diabetes", x, y, seed, "regression")


def load_adding(
    seed: int = 0, n_train: int = 2000, n_val: int = 500, n_test: int = 500, min_len: int = 10, max_len: int = 200
) -> Dataset:
    """The adding problem: steps (value ~ U(0, 1), marker), two markers; target = sum of marked values."""
    if not 2 <= min_len <= max_len:
        raise ValueError(f"need 2 <= min_len <= max_len, got {min_len}, {max_len}")
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val + n_test
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    values = torch.rand(n, max_len, generator=g) * (torch.arange(max_len)[None, :] < lengths[:, None])
    # Two distinct marked steps inside each valid length.
    first = (torch.rand(n, generator=g) * lengths).long()
    second = (first + 1 + (torch.rand(n, generator=g) * (lengths - 1)).long()) % lengths
    markers = torch.zeros(n, max_len)
    rows = torch.arange(n)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    x = torch.stack([values, markers], dim=-1)  # (N, T, 2)
    y = values[rows, first] + values[rows, second]
    full = Split(x, y, lengths)
    cuts = torch.arange(n)
    return Dataset(
        "adding",
        "regression",
        full.subset(cuts[:n_train]),
        full.subset(cuts[n_train : n_train + n_val]),
        full.subset(cuts[n_train + n_val :]),
    )


def load_digits(seed: int = 0) -> Dataset:
    """scikit-learn's bundled 8x8 digits: each image a sequence of 8 rows of 8 pixels, 10 classes."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = torch.tensor(bunch.images, dtype=torch.float32)  # (N, 8, 8)
    y = torch.tensor(bunch.target, dtype=torch.long)
    lengths = torch.full((len(x),), 8)
    return _random_splits("digits", x, y, seed, "classification", lengths=lengths, n_classes=10)


def load_dates(seed: int = 0, n_train: int = 20000, n_val: int = 2000, n_test: int = 2000) -> Dataset:
    """Human-written dates in many formats -> ISO YYYY-MM-DD, character level (see `training/data/dates.py`)."""

    def encode(pairs: list[tuple[str, str]]) -> Split:
        x = torch.zeros(len(pairs), dates.MAX_SOURCE_LEN, dtype=torch.long)  # 0 = padding
        y = torch.zeros(len(pairs), dates.MAX_TARGET_LEN, dtype=torch.long)
        for i, (text, iso) in enumerate(pairs):
            x[i, : len(text)] = torch.tensor(source_ids(text, dates.SOURCE_CHARS))
            y[i] = torch.tensor(target_ids(iso, dates.TARGET_CHARS))
        return Split(x, y, torch.tensor([len(text) for text, _ in pairs]))

    train, val, test = (encode(p) for p in dates.generate_pairs(seed, (n_train, n_val, n_test)))
    vocabs = dict(source_vocab=tuple(dates.SOURCE_CHARS), target_vocab=tuple(dates.TARGET_CHARS))
    return Dataset("dates", "translation", train, val, test, standardize=False, **vocabs)


LOADERS: dict[str, Callable[..., Dataset]] = {
    "sine": load_sine,
    "diabetes": load_diabetes,
    "adding": load_adding,
    "digits": load_digits,
    "dates": load_dates,
}


def load_dataset(name: str, seed: int = 0, **options) -> Dataset:
    if name not in LOADERS:
        raise ValueError(f"unknown data set {name!r}; expected one of {sorted(LOADERS)}")
    return LOADERS[name](seed=seed, **options)


@torch.no_grad()
def prepare_model(model: nn.Module, data: Dataset) -> nn.Module:
    """Fit the model's scalers on the training split and, for NW, store the training set as its memory."""
    data_family_of(model).prepare(model, data)
    return model
