"""Predictions and explanations agree for every model kind, whatever the batch (the contract's tolerance)."""

import json
import random

import pytest
import torch

from handlers.answers import AGREEMENT_ABS, AGREEMENT_REL
from handlers.contract import Limits, adapter_for, agrees, answer_batch
from training.data import dates
from training.nn import NWConfig, PixelConfig, Seq2SeqConfig, SequenceConfig, build_model
from training.nn.seq2seq import EOS

INFO = {"name": "toy", "version": "1", "run_id": "r"}


@torch.no_grad()
def nw(n_classes=0):
    torch.manual_seed(0)
    model = build_model("nw", NWConfig(in_features=2, n_keys=40, bandwidth=1.5, n_classes=n_classes))
    x = torch.rand(40, 2) * 5
    y = (x.sum(-1) > 5).long() + (x[:, 0] > 4).long() if n_classes else torch.sin(x[:, 0]) * 300 + x[:, 1]
    model.set_memory(x, y)
    return model.eval(), [[round(random.uniform(0, 5), 3) for _ in range(2)] for _ in range(12)]


def mha(task):
    torch.manual_seed(0)
    config = SequenceConfig(in_features=2, d_model=16, n_heads=2, n_layers=2, task=task, out_features=3)
    steps = [
        [[round(random.random(), 3), random.choice([0, 1])] for _ in range(random.randint(2, 30))] for _ in range(12)
    ]
    return build_model("mha", config).eval(), steps


@torch.no_grad()
def s2s():
    torch.manual_seed(0)
    config = Seq2SeqConfig(source_vocab=dates.SOURCE_CHARS, target_vocab=dates.TARGET_CHARS, max_source_len=48)
    model = build_model("s2s", config).eval()
    model.decoder.out.bias[EOS] = -1e3  # untrained, it would often stop at once: let it write every step
    return model, ["23 Nov 2026", "1/2/1999", "March 3, 2001", "2020-02-29", "7 jul 76", "Sat 1 Jan 2000"] * 2


@torch.no_grad()
def pixel():
    torch.manual_seed(0)
    config = PixelConfig(channels=8, depth=2, attention_at=2, reduction=2, value_range=[0.0, 16.0])
    model = build_model("pixel", config).eval()
    model.attention.gamma.fill_(0.5)  # attention shows in the answer
    return model, [torch.randint(0, 17, (8, 8)).tolist() for _ in range(12)]


KINDS = {
    "nw-regression": lambda: nw(),
    "nw-classification": lambda: nw(n_classes=3),
    "mha-regression": lambda: mha("regression"),
    "mha-classification": lambda: mha("classification"),
    "s2s": s2s,
    "pixel": pixel,
}


def ask(adapter, limits, requests):
    """`requests`: (explain, instance indices) per request of one batch; the answers' per-instance predictions."""
    bodies = [json.dumps({"instances": [INSTANCES[i] for i in wanted]}).encode() for _, wanted in requests]
    answers = answer_batch(bodies, [explain for explain, _ in requests], adapter, limits, INFO)
    got = {}
    for (explain, wanted), answer in zip(requests, answers):
        assert answer.status == 200, answer.body
        body = json.loads(answer.body)
        values = [e["prediction"] for e in body["explanations"]] if explain else body["predictions"]
        for i, value in zip(wanted, values):
            got.setdefault(i, []).append(value)
    return got


INSTANCES: list = []


@pytest.mark.parametrize("kind", list(KINDS))
def test_an_explanations_prediction_agrees_with_the_prediction_in_any_batch(kind):
    global INSTANCES
    random.seed(1)
    model, INSTANCES = KINDS[kind]()
    limits = Limits()
    adapter = adapter_for(model, limits)
    n = len(INSTANCES)
    alone = ask(adapter, limits, [(False, list(range(n)))])  # every instance in one prediction request
    mixed = ask(adapter, limits, [(True, [3]), (False, [5, 0, 1]), (True, list(range(n - 1, -1, -1))), (False, [2])])
    one_by_one = {}
    for i in range(n):
        for explain in (False, True):
            for key, values in ask(adapter, limits, [(explain, [i])]).items():
                one_by_one.setdefault(key, []).extend(values)
    for i in range(n):
        reference = alone[i][0]
        for other in mixed.get(i, []) + one_by_one[i]:
            assert agrees(other, reference), (kind, i, other, reference)


def test_agreement_is_a_tolerance_that_can_fail():
    assert agrees(1.0, 1.0 + AGREEMENT_ABS / 2) and not agrees(1.0, 1.0 + 3 * AGREEMENT_ABS)
    assert agrees(1e6, 1e6 * (1 + AGREEMENT_REL / 2)) and not agrees(1e6, 1e6 * (1 + 3 * AGREEMENT_REL))
    assert agrees({"label": 1, "probabilities": [0.5, 0.5]}, {"label": 1, "probabilities": [0.500001, 0.499999]})
    assert not agrees({"label": 1, "probabilities": [0.5, 0.5]}, {"label": 0, "probabilities": [0.5, 0.5]})
    assert not agrees("2026-11-23", "2026-11-24") and not agrees([1.0, 2.0], [1.0])
