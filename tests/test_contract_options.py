"""Every combination of a request's options, on both routes and every model kind, gets an answer: a 200, or a
named 4xx; never a 5xx, never nothing, and never at the cost of a valid request batched with it."""

import itertools
import json

import pytest
import torch

from handlers.contract import Limits, adapter_for, answer_batch
from training.data import dates
from training.data.datasets import load_dataset, prepare_model
from training.nn import NWConfig, PixelConfig, Seq2SeqConfig, SequenceConfig, build_model

INFO = {"name": "toy", "version": "1", "run_id": "r"}
ABSENT = object()
OPTIONS = {  # each option of the contract, with the values a client may send: valid, and not
    "heads": [ABSENT, False, True, "yes", None],
    "queries": [ABSENT, [[1, 3]], [], [[9, 9]], "x"],
}


@torch.no_grad()
def models() -> dict[str, tuple[torch.nn.Module, object]]:
    """A small model of each kind, with one valid instance for it."""
    torch.manual_seed(0)
    nw = build_model("nw", NWConfig(in_features=1, n_keys=20, bandwidth=2.0))
    nw.set_memory(torch.linspace(0, 5, 20), torch.sin(torch.linspace(0, 5, 20)))
    mha = build_model("mha", SequenceConfig(in_features=2, d_model=8, n_heads=2, n_layers=1))
    s2s = build_model(
        "s2s", Seq2SeqConfig(source_vocab=dates.SOURCE_CHARS, target_vocab=dates.TARGET_CHARS, max_source_len=48)
    )
    pixel = prepare_model(build_model("pixel", PixelConfig(channels=4, depth=1, value_range=[0.0, 16.0])), DIGITS)
    return {
        "nw": (nw.eval(), 1.0),
        "mha": (mha.eval(), [[0.5, 1.0], [0.2, 0.0]]),
        "s2s": (s2s.eval(), "23 Nov 2026"),
        "pixel": (pixel.eval(), [[0.0] * 8 for _ in range(8)]),
    }


DIGITS = load_dataset("digits")
MODELS = models()


def bodies_with_every_option(instance) -> list[dict]:
    bodies = []
    for values in itertools.product(*OPTIONS.values()):
        options = {key: value for key, value in zip(OPTIONS, values) if value is not ABSENT}
        bodies.append({"instances": [instance], **options})
    return bodies


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("explain", [False, True])
def test_every_combination_of_options_is_answered_and_valid_requests_beside_it_are_too(kind, explain):
    model, instance = MODELS[kind]
    limits = Limits()
    adapter = adapter_for(model, limits)
    combos = bodies_with_every_option(instance)
    plain = {"instances": [instance]}
    raw = [json.dumps(body).encode() for body in [plain, *combos, plain]]
    answers = answer_batch(raw, [explain] * len(raw), adapter, limits, INFO)
    assert len(answers) == len(raw) and all(answer is not None for answer in answers)
    assert answers[0].status == 200 and answers[-1].status == 200
    for body, answer in zip(combos, answers[1:-1]):
        parsed = json.loads(answer.body)
        assert answer.status == 200 or (400 <= answer.status < 500 and parsed["error"] and parsed["detail"]), (
            body,
            answer,
        )
        if answer.status == 200:
            assert list(parsed) == ["explanations" if explain else "predictions", "model"]


def test_predictions_asking_for_heads_are_told_that_heads_belong_to_explanations():
    model, instance = MODELS["mha"]
    limits = Limits()
    adapter = adapter_for(model, limits)
    bodies = [{"instances": [instance], "heads": True}, {"instances": [instance]}]
    raw = [json.dumps(body).encode() for body in bodies]
    asked, plain = answer_batch(raw, [False, False], adapter, limits, INFO)
    assert asked.status == 400 and json.loads(asked.body)["error"] == "invalid heads"
    assert "/explanations" in json.loads(asked.body)["detail"]
    assert plain.status == 200
    (explained,) = answer_batch(raw[:1], [True], adapter, limits, INFO)
    assert explained.status == 200 and "head_weights" in json.loads(explained.body)["explanations"][0]
