"""Text instances for the seq2seq model (`s2s`): each instance a string, translated character by character.

Prediction: the decoded string. Explanation: the output tokens, the input tokens and the alignment, the
decoder's attention weights (one row per output token, summing to 1 over the input tokens).
A request is priced by its characters times the most tokens the decoder may emit.
"""

from __future__ import annotations

import json
from typing import Any

from training.nn import Seq2Seq, translate
from training.nn.seq2seq import EXAMPLE, FAMILY, Translation, UnknownCharacterError, source_ids

from .answers import BYTES_PER_CHARACTER, BYTES_PER_NUMBER, TEXT_ANSWER_BYTES, TOKEN_BYTES, WEIGHT_DECIMALS
from .errors import RequestError
from .numbers import preview
from .sequences import SequenceAdapter
from .types import Cost, Limits


class TextAdapter(SequenceAdapter):
    """Parses, prices and explains texts; batching in length-sorted passes comes from `SequenceAdapter`."""

    family = FAMILY
    per_head_weights = False

    def __init__(self, model: Seq2Seq, limits: Limits):
        self.model = model.eval()
        self.limits = limits
        self.config = model.config
        self.max_chars = min(self.config.max_source_len, limits.max_steps)

    # parse

    def example(self) -> bytes:
        """A valid one-instance request body: a date, in the characters the model knows."""
        text = "".join(c for c in EXAMPLE if c in self.config.source_vocab) or self.config.source_vocab[0]
        return json.dumps({"instances": [text]}).encode()

    def parse(self, instances: list) -> list[str]:
        return [self.parse_text(item, f"instances[{i}]") for i, item in enumerate(instances)]

    def parse_text(self, item: Any, where: str) -> str:
        """A non-empty string of known characters, at most `max_chars` long."""
        if type(item) is not str:
            raise RequestError("invalid instance", f"{where} must be a string, got {preview(item)}")
        if not item.strip():
            raise RequestError("empty text", f"{where} is empty or only spaces")
        if len(item) > self.max_chars:
            detail = f"{where} has {len(item)} characters; at most {self.max_chars}"
            raise RequestError("text too long", detail, status=413)
        try:
            source_ids(item, self.config.source_vocab)
        except UnknownCharacterError as error:
            known = "".join(self.config.source_vocab)
            detail = f"{where} has {error.char!r} at position {error.position}; the model knows only {known!r}"
            raise RequestError("unknown character", detail) from None
        return item

    # price

    def sequence_mmac(self, chars: int, heads: bool = False) -> float:
        """Multiply-adds of one text: the encoder GRU per character, and per decoded token the GRU step,
        the output layer and additive attention over every character (keys projected again each step)."""
        c = self.config
        E, H, A, L, V = c.embed_size, c.hidden_size, c.attention_size, c.n_layers, len(c.target_vocab) + 3
        encoder = chars * 3 * ((E + H) * H + (L - 1) * 2 * H * H)
        step = 3 * ((E + 2 * H) * H + (L - 1) * 2 * H * H) + H * V + H * A + chars * (H * A + A + H)
        return (encoder + c.max_target_len * step) / 1e6

    def cost(self, texts: list[str], explain: bool, heads: bool) -> Cost:
        mmac = sum(self.sequence_mmac(len(t)) for t in texts)
        outputs = self.config.max_target_len
        size = sum(TEXT_ANSWER_BYTES + outputs * BYTES_PER_CHARACTER for _ in texts)  # the decoded strings
        if explain:
            size += sum(len(t) * TOKEN_BYTES + outputs * (TOKEN_BYTES + len(t) * BYTES_PER_NUMBER) for t in texts)
        return Cost(mmac, size)

    def budget_hint(self) -> str:
        longest = self.sequence_mmac(self.max_chars)
        return f"about {int(self.limits.max_request_mmac / longest):,} texts of {self.max_chars} characters"

    # run: `SequenceAdapter.run` sorts texts by length and runs them in passes within the pass budget

    def forward(self, texts: list[str], explain: bool, heads: bool = False) -> tuple[list[Any], list[float | None]]:
        """A pass's answers and novelty scores (each output's mean surprise per decoded character)."""
        results = translate(self.model, texts, need_weights=explain)
        scores = [r.surprise for r in results]
        if not explain:
            return [r.text for r in results], scores
        return [explanation(r) for r in results], scores


def explanation(result: Translation) -> dict:
    weights = result.weights.double().round(decimals=WEIGHT_DECIMALS)  # (T_out, T_src)
    return {
        "prediction": result.text,
        "output_tokens": result.output_tokens,
        "input_tokens": result.input_tokens,
        "weights": weights.tolist(),  # one row per output token, summing to 1 over the input tokens
    }
