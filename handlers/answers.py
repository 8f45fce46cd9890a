"""What the adapters share in building answers: how numbers are rounded and what they cost in bytes, class
answers, and cutting a batch's results back into requests."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from .types import Ran

logger = logging.getLogger(__name__)

WEIGHT_DECIMALS = 7  # explanations' weights are rounded: ample for weights in [0, 1], and half the bytes
PROBABILITY_DECIMALS = 6  # class probabilities are rounded to this many decimals
# An explanation's prediction and the /predictions answer for the same input are two float32 computations
# (another batch, the weights path beside the fused one): they agree within this tolerance, not bit for bit.
# A number a agrees with b when |a - b| <= AGREEMENT_ABS + AGREEMENT_REL * |b| (AGREEMENT_ABS is ten units of a
# rounded probability's last decimal). Labels and decoded strings are equal unless the model's choice was a tie
# within that tolerance.
AGREEMENT_ABS = 1e-5
AGREEMENT_REL = 1e-5
HEAD_WEIGHT_MAC = 100  # materialized softmax weights cost about this many multiply-adds each
# Estimated bytes of the JSON answer, to price a request before it runs:
BYTES_PER_NUMBER = 12  # a rounded weight and its separator
BYTES_PER_STEP_ROW = 4  # the brackets and separator around one row of step weights
NUMBER_ANSWER_BYTES = 30  # a regression prediction: a number with its separator
CLASS_ANSWER_BYTES = 40  # a class answer's label and keys, before its probabilities
EXPLANATION_BYTES = 60  # an explanation's own keys and brackets, before its weights
TOP_KEY_BYTES = 60  # an NW explanation's most attended key: index, value, weight, row
KEY_FEATURE_BYTES = 25  # one input of a most attended key, at 7 significant digits
MAP_SEPARATOR_BYTES = 12  # between two attention maps of a pixel explanation
TEXT_ANSWER_BYTES = 20  # a decoded string's quotes and separator
BYTES_PER_CHARACTER = 4  # one decoded character, escaped at worst
TOKEN_BYTES = 6  # one token of an explanation's token list


def class_answers(logits: Tensor, labels: list) -> list[dict]:
    """Per row of (B, classes) logits, its label and probabilities: one float64 softmax for the whole batch."""
    probabilities = torch.softmax(logits.double(), dim=-1)  # (B, classes)
    best = probabilities.argmax(dim=-1).tolist()
    rounded = probabilities.round(decimals=PROBABILITY_DECIMALS).tolist()
    return [{"label": labels[k], "probabilities": p} for k, p in zip(best, rounded)]


def agrees(a, b) -> bool:
    """Whether two answers for the same input agree within the contract's tolerance: numbers by
    `AGREEMENT_ABS` and `AGREEMENT_REL`, everything else (labels, strings) exactly, lists and objects element
    by element."""
    if type(a) in (int, float) and type(b) in (int, float):
        return abs(a - b) <= AGREEMENT_ABS + AGREEMENT_REL * abs(b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(agrees(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(agrees(a[k], b[k]) for k in a)
    return a == b


def ran(results: list, scores: list, beyond: list[bool] | None, counts: list[int]) -> Ran:
    """A group's flat per-instance results, novelty scores and beyond-range flags, cut back into requests: a
    request left unfinished (short `results`, or a None among them) gets None; short `scores` are None, short
    `beyond` False."""
    n, beyond = sum(counts), beyond or []
    results, scores = results + [None] * (n - len(results)), scores + [None] * (n - len(scores))
    beyond = beyond + [False] * (n - len(beyond))
    per_request, per_scores, per_beyond, start = [], [], [], 0
    for count in counts:
        end = start + count
        chunk = results[start:end]
        per_request.append(None if None in chunk else chunk)
        per_scores.append(scores[start:end])
        per_beyond.append(sum(beyond[start:end]))
        start = end
    return Ran(per_request, per_scores, per_beyond)


class NoveltyScores:
    """Computes a pass's novelty scores; measuring never fails a request: on an error the pass's scores are None
    and the error is logged once per worker."""

    failed = False

    @classmethod
    def of(cls, compute: Callable[[], Tensor], n: int) -> list[float | None]:
        try:
            return compute().double().cpu().tolist()
        except Exception as error:
            if not cls.failed:
                logger.warning("novelty scores are off for this worker: %s: %s", type(error).__name__, error)
            cls.failed = True
            return [None] * n
