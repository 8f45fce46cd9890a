"""Each model kind's Open Inference Protocol tensors, declared once: what `/v2/models/<name>` would list and what
`handlers/oip.py` checks requests against. Inputs map to the instances the kind's adapter already takes.

- nw (tabular): `features` FP32 [-1, D] (FP64 and integers accepted);
- mha (sequences): `sequences` FP32 [-1, T, F], and `lengths` INT64 [-1] (optional) for a ragged batch padded to T;
- s2s (text): `texts` BYTES [-1];
- pixel (images): `images` FP32 [-1, H, W] (or [-1, C, H, W] for C channels).

Outputs: regression `prediction`; classifiers `label` (INT64, or BYTES for named classes) and `probabilities`
FP32 [-1, classes]; s2s `prediction` BYTES. Attention, only when named: `attention` (nw, as far as the archive's
`explain_keys` reveals: the weights over the training keys for values, the most attended keys' indices for
index, nothing for none), `pooling_weights` (mha, 0 past a sequence's length), `alignment` (s2s, output tokens x
input tokens, zero-padded to the batch's longest) and `pixel_attention` (pixel: the attention each pixel
receives, H x W).
"""

from __future__ import annotations

from collections.abc import Callable

from .images import ImageAdapter
from .oip_tensors import FLOATS, INTEGERS, InputTensor, OipKind, OutputSpec, TensorSpec, invalid
from .sequences import SequenceAdapter
from .tabular import TabularAdapter
from .text import TextAdapter
from .types import Adapter

NUMBERS = (FLOATS | INTEGERS) - {"FP32"}  # taken in place of FP32


def predictions(regression: bool, labels: list, datatype: str = "FP32", width: int = 1) -> tuple[OutputSpec, ...]:
    """A regression's `prediction` ([-1], or [-1, width] for several targets), or a classifier's label and
    probabilities."""
    if regression:
        return (OutputSpec(TensorSpec("prediction", datatype, (-1,) if width == 1 else (-1, width)), lambda p, e: p),)
    label_type = "INT64" if all(type(label) is int for label in labels) else "BYTES"
    return (
        OutputSpec(TensorSpec("label", label_type, (-1,)), lambda p, e: p["label"]),
        OutputSpec(TensorSpec("probabilities", "FP32", (-1, len(labels))), lambda p, e: p["probabilities"]),
    )


def attention(name: str, datatype: str, shape: tuple[int, ...], take: Callable[[dict], list]) -> OutputSpec:
    return OutputSpec(TensorSpec(name, datatype, shape), lambda p, e: take(e), explained=True)


def tabular(adapter: TabularAdapter) -> OipKind:
    features = TensorSpec("features", "FP32", (-1, adapter.n_features), NUMBERS)
    outputs = predictions(not adapter.n_classes, adapter.labels, "FP64")  # NW is served in float64
    revealed, top = adapter.limits.explain_keys, min(adapter.limits.top_keys, adapter.n_keys)
    if revealed == "values":
        outputs += (attention("attention", "FP64", (-1, adapter.n_keys), lambda e: e["weights"]),)
    elif revealed == "index":
        outputs += (attention("attention", "INT64", (-1, top), lambda e: [k["index"] for k in e["top_keys"]]),)
    return OipKind((features,), outputs, lambda tensors: tensors["features"].rows())


def sequences(adapter: SequenceAdapter) -> OipKind:
    steps = TensorSpec("sequences", "FP32", (-1, -1, adapter.n_features), NUMBERS)
    lengths = TensorSpec("lengths", "INT64", (-1,), INTEGERS - {"INT64"}, required=False)
    outputs = predictions(adapter.regression, adapter.labels, width=adapter.classes)
    outputs += (attention("pooling_weights", "FP32", (-1, -1), lambda e: e["pooling_weights"]),)
    return OipKind((steps, lengths), outputs, ragged_sequences)


def ragged_sequences(tensors: dict[str, InputTensor]) -> list:
    """Each sequence cut to its length: `lengths` says how many of the T padded steps are real."""
    padded = tensors["sequences"].rows()
    if "lengths" not in tensors:
        return padded
    lengths, steps = tensors["lengths"].data, tensors["sequences"].shape[1]
    if len(lengths) != len(padded):
        raise invalid(f"input 'lengths' has {len(lengths)} values; input 'sequences' has {len(padded)} sequences")
    wrong = next((i for i, n in enumerate(lengths) if not 1 <= n <= steps), None)
    if wrong is not None:
        raise invalid(f"input 'lengths'[{wrong}] is {lengths[wrong]}; a length is 1..{steps} (the padded steps)")
    return [sequence[:n] for sequence, n in zip(padded, lengths)]


def text(adapter: TextAdapter) -> OipKind:
    outputs = (
        OutputSpec(TensorSpec("prediction", "BYTES", (-1,)), lambda p, e: p),
        attention("alignment", "FP32", (-1, -1, -1), lambda e: e["weights"]),
    )
    return OipKind((TensorSpec("texts", "BYTES", (-1,)),), outputs, lambda tensors: tensors["texts"].data)


def images(adapter: ImageAdapter) -> OipKind:
    shape = (-1, adapter.H, adapter.W) if adapter.C == 1 else (-1, adapter.C, adapter.H, adapter.W)
    outputs = predictions(False, adapter.labels)
    outputs += (attention("pixel_attention", "FP32", (-1, adapter.H, adapter.W), lambda e: e["attended"]),)
    return OipKind((TensorSpec("images", "FP32", shape, NUMBERS),), outputs, lambda tensors: tensors["images"].rows())


# One per model kind, by the name of its family (as `contract.ADAPTERS`).
KINDS: dict[str, Callable] = {
    TabularAdapter.family.name: tabular,
    SequenceAdapter.family.name: sequences,
    TextAdapter.family.name: text,
    ImageAdapter.family.name: images,
}


def oip_kind(adapter: Adapter) -> OipKind:
    return KINDS[adapter.family.name](adapter)
