"""The model card a registered version carries: the pure markdown builder, and its example request as the
handler parses it (the training package states the handler's ways and limits without importing it)."""

import json
import re

import pytest
import torch

from handlers.contract import adapter_for
from handlers.types import Limits
from training.data import dates
from training.data.datasets import Dataset, Split, load_dataset, prepare_model
from training.nn import NWConfig, PixelConfig, Seq2SeqConfig, SequenceConfig, build_model
from training.tracking import model_card
from training.tracking.model_card import ModelCard, card_for, render


def example_in(markdown: str) -> dict:
    """The card's example request body: the JSON block under "## Input"."""
    return json.loads(re.search(r"```json\n(.*?)\n```", markdown, re.S).group(1))


def test_classification_card_says_task_classes_input_split_metrics_and_limits():
    card = ModelCard(
        name="nw-iris",
        kind="nw",
        task="classification",
        classes=["setosa", "versicolor", "virginica"],
        instance="a list of 2 numbers or an object of them by name (petal_length, petal_width)",
        example={"instances": [{"petal_length": 3.76, "petal_width": 1.2}]},
        data={"file": "`data/iris.csv`", "sha256": "`ab12`", "rows": 150, "target": "`species`"},
        splits={"train": 90, "validation": 30, "test": 30},
        protocol="cv5",
        validation={"accuracy": 0.95, "nll": 0.1234567},
        test={"accuracy": 0.9333333, "nll": 0.2},
        limits=["at most 256 instances per request (the handler's default)"],
    )
    text = render(card)
    assert text.startswith("# nw-iris: classification, Nadaraya-Watson kernel regression (`nw`)")
    assert "3 classes: setosa, versicolor, virginica" in text
    assert example_in(text) == card.example and "POST /predictions/nw-iris" in text
    assert "split: train 90, validation 30, test 30" in text and "5-fold cross-validation" in text
    assert "| accuracy | 0.95 | 0.933333 |" in text and "| nll | 0.123457 | 0.2 |" in text
    assert "`data/iris.csv`" in text and "at most 256 instances" in text


def test_a_card_stays_within_what_mlflow_stores():
    many = [f"feature_{i}" for i in range(2000)]
    card = ModelCard("m", "nw", "regression", [], "a list", {"instances": [[0.0]]}, {}, {}, "holdout", {}, {}, many)
    assert len(render(card)) <= model_card.MAX_CHARS


def tiny_sequences() -> Dataset:
    x = torch.randn(4, 5, 2)  # (B, T, D)
    split = Split(x, torch.randn(4), torch.tensor([5, 3, 2, 1]))
    return Dataset("tiny", "regression", split, split, split)


def tiny_images() -> Dataset:
    split = Split(torch.rand(4, 8, 8) * 16, torch.tensor([0, 1, 2, 1]), torch.full((4,), 8))
    return Dataset("tiny", "classification", split, split, split, n_classes=3)


MODELS = {
    "nw": lambda: (build_model("nw", NWConfig(in_features=1, n_keys=50)), load_dataset("sine", seed=0)),
    "mha": lambda: (build_model("mha", SequenceConfig(in_features=2, d_model=8, n_heads=2)), tiny_sequences()),
    "pixel": lambda: (build_model("pixel", PixelConfig(n_classes=3, value_range=[0.0, 16.0])), tiny_images()),
    "s2s": lambda: (
        build_model("s2s", Seq2SeqConfig(source_vocab=dates.SOURCE_CHARS, target_vocab=dates.TARGET_CHARS)),
        Dataset("dates", "translation", *[Split(torch.zeros(1, 3), torch.zeros(1, 3))] * 3),
    ),
}


@pytest.mark.parametrize("kind", MODELS)
def test_the_example_request_is_one_the_handler_takes(kind):
    model, data = MODELS[kind]()
    if kind in ("nw", "mha"):
        prepare_model(model, data)
    card = card_for(model, data, name=f"{kind}-x", protocol="holdout", validation={}, test={})
    body = example_in(render(card))
    adapter_for(model, Limits()).parse(body["instances"])  # raises RequestError on anything it refuses
    assert card.kind == kind and len(body["instances"]) == 1


def test_a_tabular_example_is_the_training_mean_within_the_training_range():
    model, data = MODELS["nw"]()
    card = card_for(prepare_model(model, data), data, name="nw-sine", protocol="holdout", validation={}, test={})
    (value,) = card.example["instances"][0]
    assert value == pytest.approx(float(data.train.x.mean()), rel=1e-5)
    assert float(data.train.x.min()) <= value <= float(data.train.x.max())
    assert any(limit.startswith("training range: x0 in [") for limit in card.limits)
