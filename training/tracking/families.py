"""The MLflow records' part of each model kind, beside its `Family` (`training/nn`): the figures a concluded model
logs, and what its model card says one instance is, shows as an example request and states as its limits.

The example request is made much as the handler's adapters make theirs (`example()` in handlers/*.py), which the
training package does not import; the handler's limits are stated as its defaults (training/nn/bounds.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from training.data.datasets import Dataset
from training.nn import family_of, nadaraya_watson, pixel, seq2seq, sequence_model
from training.nn.bounds import MAX_ABS_Z, MAX_STEPS  # the handler's defaults
from training.nn.family import Family
from training.nn.seq2seq import EXAMPLE as TEXT_EXAMPLE  # the text model's example request, as the handler's
from training.tracking import plots

NAMED_FEATURES = 20  # an example instance is an object by feature name up to this many features, else a list
LISTED = 10  # features (ranges) and classes listed by name; the rest are counted


@dataclass(frozen=True)
class TrackingFamily:
    family: Family
    figures: Callable[[nn.Module, Dataset], dict[str, Figure]]  # file name under plots/ -> figure
    instance: Callable[[Any], str]  # (config) -> what one instance is, in words
    example: Callable[[Any, Dataset], dict]  # (config, data) -> a valid one-instance request body
    limits: Callable[[Any, Dataset], list[str]]  # (config, data) -> what the handler refuses, beyond the instances
    metrics: Callable[[nn.Module], dict[str, float]] = lambda model: {}  # logged beside the figures

    @property
    def name(self) -> str:
        return self.family.name


def listed(items: list) -> str:
    shown = ", ".join(str(item) for item in items[:LISTED])
    return shown + (f" and {len(items) - LISTED} more" if len(items) > LISTED else "")


# tabular rows and sequences of them (nw, mha)


def numbers_words(config) -> str:
    names = config.feature_names or []
    count = "one number" if config.in_features == 1 else f"{config.in_features} numbers"
    return f"a list of {count}" + (f" or an object of them by name ({listed(names)})" if names else "")


def mean_row(config, data: Dataset) -> list | dict:
    """The training split's mean, by feature name where the model has names (and not too many)."""
    mean = [float(f"{v:.6g}") for v in feature_rows(data).mean(0).tolist()]
    names = config.feature_names or []
    return dict(zip(names, mean)) if names and len(names) <= NAMED_FEATURES else mean


def range_limits(config, data: Dataset) -> list[str]:
    names = config.feature_names or [f"x{i}" for i in range(config.in_features)]
    rows = feature_rows(data)
    low, high = rows.amin(0).tolist(), rows.amax(0).tolist()
    return [
        f"values beyond the training mean ± {MAX_ABS_Z:g} standard deviations are refused; outside the "
        "training split's range below, a prediction is an extrapolation",
        "training range: " + listed([f"{n} in [{a:.4g}, {b:.4g}]" for n, a, b in zip(names, low, high)]),
    ]


def feature_rows(data: Dataset) -> torch.Tensor:
    """The training split's inputs as rows (N, D): a sequence's steps without its padding."""
    x, lengths = data.train.x.double(), data.train.lengths
    if lengths is not None:
        x = x[torch.arange(x.shape[1])[None, :] < lengths[:, None]]  # (steps, D)
    return x.reshape(-1, x.shape[-1])


def nw_figures(model, data: Dataset) -> dict[str, Figure]:
    figures = {"nw_predictions.png": plots.nw_predictions(model, data)} if data.task == "regression" else {}
    return figures | {"nw_attention_heatmap.png": plots.nw_attention_heatmap(model, data)}


NW = TrackingFamily(
    nadaraya_watson.FAMILY,
    figures=nw_figures,
    instance=lambda c: ("a number, or " if c.in_features == 1 and not c.feature_names else "") + numbers_words(c),
    example=lambda c, data: {"instances": [mean_row(c, data)]},
    limits=range_limits,
)

MHA = TrackingFamily(
    sequence_model.FAMILY,
    figures=lambda model, data: {
        "mha_pooling_heatmap.png": plots.mha_pooling_heatmap(model, data),
        "mha_head_maps.png": plots.mha_head_maps(model, data),
    },
    instance=lambda c: f"a sequence: a list of up to {MAX_STEPS} steps, each {numbers_words(c)}",
    example=lambda c, data: {"instances": [[mean_row(c, data)]]},  # one step
    limits=lambda c, data: [f"at most {MAX_STEPS} steps per sequence (the handler's default)", *range_limits(c, data)],
)

# texts (s2s)

S2S = TrackingFamily(
    seq2seq.FAMILY,
    figures=lambda model, data: {"s2s_alignments.png": plots.s2s_alignments(model, data)},
    instance=lambda c: f"a string of at most {min(c.max_source_len, MAX_STEPS)} characters",
    example=lambda c, data: {
        "instances": ["".join(ch for ch in TEXT_EXAMPLE if ch in c.source_vocab) or c.source_vocab[0]]
    },
    limits=lambda c, data: [
        f"characters outside the training vocabulary are refused: it knows `{''.join(c.source_vocab)}`"
    ],
)

# images (pixel)


def image_words(config) -> str:
    image = f"{config.height} rows of {config.width} numbers"
    channels = image if config.in_channels == 1 else f"{config.in_channels} channels of {image}"
    return f"an image, {channels} (or the same numbers flat, row by row)"


def blank_image(config, data: Dataset) -> dict:
    blank = float(config.value_range[0]) if config.value_range else 0.0
    image = [[blank] * config.width for _ in range(config.height)]
    return {"instances": [image if config.in_channels == 1 else [image] * config.in_channels]}


def pixel_limits(config, data: Dataset) -> list[str]:
    if not config.value_range:
        return []
    low, high = config.value_range
    return [f"pixel values within the training images' range [{low:g}, {high:g}]; others are refused"]


PIXEL = TrackingFamily(
    pixel.FAMILY,
    figures=lambda model, data: {"pixel_attention.png": plots.pixel_attention(model, data)},
    instance=image_words,
    example=blank_image,
    limits=pixel_limits,
    metrics=lambda model: {"gamma": float(model.attention.gamma.detach())},  # how much the attention block weighs in
)

FAMILIES: dict[str, TrackingFamily] = {family.name: family for family in (NW, MHA, S2S, PIXEL)}


def tracking_family_of(model: nn.Module) -> TrackingFamily:
    return FAMILIES[family_of(model).name]
