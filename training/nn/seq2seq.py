"""Bahdanau encoder-decoder: a GRU encoder and a GRU decoder that attends over the encoder's outputs.

At decoder step t the query is the decoder's state s_{t-1} (top layer), the keys and values are the
encoder outputs h_1..h_T of the valid source steps:
    c_t = sum_j softmax_j(w_v^T tanh(W_q s_{t-1} + W_k h_j)) h_j        (additive attention)
    s_t = GRU([embed(y_{t-1}), c_t], s_{t-1}),   p(y_t) = softmax(W_o s_t)
The weights alpha_{t, j} over t and j form the alignment matrix (output tokens x input tokens).
Training feeds the true previous token with probability `teacher_forcing` per step, the model's own
otherwise; inference decodes greedily until end-of-sequence or `max_target_len` tokens.

With `attention=False` (an ablation for the benchmarks) the decoder attends over a single key, the
encoder's final state, so its context is fixed for the whole output, as in encoder-decoders before attention.

Character level. The vocabularies travel in the config, so a checkpoint is all a served model needs.
Source ids: 0 padding, 1 + index in `source_vocab`. Target ids: 0 padding, 1 begin, 2 end,
3 + index in `target_vocab`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .attention import AdditiveAttention
from .family import Family, Inputs, Outputs

PAD, BOS, EOS = 0, 1, 2
N_SPECIAL = 3  # target ids below this are PAD / BOS / EOS
EXAMPLE = "23 Nov 2026"  # an example source text: the handler's example request and the model card's


@dataclass
class Seq2SeqConfig:
    source_vocab: list[str] = field(default_factory=list)  # one character each
    target_vocab: list[str] = field(default_factory=list)
    embed_size: int = 32
    hidden_size: int = 64
    attention_size: int = 64
    n_layers: int = 1
    dropout: float = 0.0
    teacher_forcing: float = 1.0  # probability of feeding the true previous token in training
    max_source_len: int = 64  # longest input the model accepts, in characters
    max_target_len: int = 16  # most tokens greedy decoding emits, end-of-sequence included
    attention: bool = True  # False: a fixed context (the encoder's final state), for comparison

    def __post_init__(self) -> None:
        self.source_vocab, self.target_vocab = list(self.source_vocab), list(self.target_vocab)  # JSON gives lists
        for name in ("source_vocab", "target_vocab"):
            vocab = getattr(self, name)
            if not vocab or any(not isinstance(c, str) or len(c) != 1 for c in vocab):
                raise ValueError(f"{name} must be a non-empty list of single characters")
            if len(set(vocab)) != len(vocab):
                raise ValueError(f"{name} has duplicate characters")
        sizes = ("embed_size", "hidden_size", "attention_size", "n_layers", "max_source_len", "max_target_len")
        if any(getattr(self, name) < 1 for name in sizes):
            raise ValueError(f"{', '.join(sizes)} must be positive")
        if not 0.0 <= self.dropout < 1.0 or not 0.0 <= self.teacher_forcing <= 1.0:
            raise ValueError("dropout must be in [0, 1) and teacher_forcing in [0, 1]")


class UnknownCharacterError(ValueError):
    """A source character outside the vocabulary; says which one and where."""

    def __init__(self, char: str, position: int):
        super().__init__(f"character {char!r} at position {position} is not in the vocabulary")
        self.char, self.position = char, position


@dataclass
class Translation:
    text: str  # the decoded output
    output_tokens: list[str]  # its characters, end-of-sequence left out
    input_tokens: list[str]  # the source characters
    weights: Tensor | None = None  # (len(output_tokens), len(input_tokens)) alignment, rows sum to 1
    surprise: float = 0.0  # mean negative log-probability of the decoded tokens: the novelty score


# helpers


def source_ids(text: str, vocab: list[str]) -> list[int]:
    index = {c: i + 1 for i, c in enumerate(vocab)}
    ids = [index.get(c, PAD) for c in text]
    if PAD in ids:
        position = ids.index(PAD)
        raise UnknownCharacterError(text[position], position)
    return ids


def target_ids(text: str, vocab: list[str]) -> list[int]:
    """The target's ids followed by end-of-sequence."""
    index = {c: i + N_SPECIAL for i, c in enumerate(vocab)}
    return [index[c] for c in text] + [EOS]


def target_text(ids: list[int], vocab: list[str]) -> str:
    """Characters up to the first special id (end-of-sequence, padding), so character t is decoding step t."""
    chars = []
    for i in ids:
        if i < N_SPECIAL:
            break
        chars.append(vocab[i - N_SPECIAL])
    return "".join(chars)


def pad_batch(rows: list[list[int]], device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
    """Id lists -> zero-padded (B, T) ids and lengths (B,)."""
    lengths = torch.tensor([len(r) for r in rows], device=device)
    ids = torch.full((len(rows), int(lengths.max())), PAD, dtype=torch.long, device=device)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return ids, lengths


# classes


class Encoder(nn.Module):
    """Embedding + GRU over the source characters; padded steps are skipped (packed)."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.embed = nn.Embedding(len(config.source_vocab) + 1, config.embed_size, padding_idx=PAD)
        self.rnn = nn.GRU(
            config.embed_size,
            config.hidden_size,
            num_layers=config.n_layers,
            batch_first=True,
            dropout=config.dropout if config.n_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) ids, (B,) lengths -> outputs (B, T, H) (zeros past each length), final state (L, B, H)."""
        x = self.dropout(self.embed(src))  # (B, T, E)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, state = self.rnn(packed)
        outputs, _ = nn.utils.rnn.pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        return outputs, state  # (B, T, H), (L, B, H)


class AttentionDecoder(nn.Module):
    """One decoding step: attend with the previous state as the query, then advance the GRU."""

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        H = config.hidden_size
        self.embed = nn.Embedding(len(config.target_vocab) + N_SPECIAL, config.embed_size, padding_idx=PAD)
        self.attention = AdditiveAttention(query_size=H, key_size=H, hidden_size=config.attention_size)
        self.rnn = nn.GRU(
            config.embed_size + H,
            H,
            num_layers=config.n_layers,
            batch_first=True,
            dropout=config.dropout if config.n_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(config.dropout)
        self.out = nn.Linear(H, len(config.target_vocab) + N_SPECIAL)

    def forward(
        self, prev: Tensor, state: Tensor, memory: Tensor, lengths: Tensor, need_weights: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """prev (B,) ids, state (L, B, H), memory (B, T, H) -> logits (B, V), state (L, B, H), weights (B, T)."""
        query = state[-1][:, None, :]  # (B, 1, H): the top layer's state
        context, weights = self.attention(query, memory, memory, lengths, need_weights=need_weights)  # (B, 1, H)
        x = torch.cat([self.dropout(self.embed(prev))[:, None, :], context], dim=-1)  # (B, 1, E + H)
        out, state = self.rnn(x, state)  # (B, 1, H), (L, B, H)
        logits = self.out(self.dropout(out[:, 0]))  # (B, V)
        return logits, state, None if weights is None else weights[:, 0]


class Seq2Seq(nn.Module):
    supports_bf16 = False  # recurrent state over many steps; float32 keeps greedy decoding stable

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = AttentionDecoder(config)

    def encode(self, src: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The decoder's memory (B, T, H) with its lengths (B,), and its initial state (L, B, H)."""
        memory, state = self.encoder(src, lengths)
        if not self.config.attention:  # one key, weight 1: the context is the final state at every step
            return state[-1][:, None, :], state, torch.ones_like(lengths)
        return memory, state, lengths

    def forward(
        self, src: Tensor, lengths: Tensor, target: Tensor, *, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None]:
        """Source (B, T) and target (B, T_out) ids (ending in end-of-sequence) -> logits (B, T_out, V).

        The decoder's input at step t is the true token t-1 (begin at t = 0) with probability
        `teacher_forcing` in training, and always in eval mode (a teacher-forced loss); else its own guess.
        Weights (B, T_out, T) when asked.
        """
        memory, state, lengths = self.encode(src, lengths)  # (B, T, H), (L, B, H), (B,)
        forcing = self.config.teacher_forcing if self.training else 1.0
        prev = torch.full_like(target[:, 0], BOS)  # (B,)
        logits, weights = [], []
        for t in range(target.shape[1]):
            step_logits, state, w = self.decoder(prev, state, memory, lengths, need_weights)
            logits.append(step_logits)
            weights.append(w)
            teach = forcing >= 1.0 or bool(torch.rand(()) < forcing)
            prev = target[:, t] if teach else step_logits.argmax(-1)
        out = torch.stack(logits, dim=1)  # (B, T_out, V)
        return out, torch.stack(weights, dim=1) if need_weights else None

    @torch.no_grad()
    def generate(
        self, src: Tensor, lengths: Tensor, *, max_len: int | None = None, need_weights: bool = False
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """Greedy decoding: (B, T) ids -> tokens (B, T_out) (padding after end-of-sequence), weights (B, T_out, T),
        and each output's surprise (B,): the mean negative log-probability of its decoded tokens, end included."""
        max_len = max_len or self.config.max_target_len
        memory, state, lengths = self.encode(src, lengths)  # (B, T, H), (L, B, H), (B,)
        prev = torch.full((src.shape[0],), BOS, dtype=torch.long, device=src.device)  # (B,)
        done = torch.zeros_like(prev, dtype=torch.bool)  # (B,)
        tokens, weights = [], []
        nll = torch.zeros(src.shape[0], dtype=torch.float64, device=src.device)  # (B,)
        for _ in range(max_len):
            logits, state, w = self.decoder(prev, state, memory, lengths, need_weights)
            best = logits.float().log_softmax(-1).max(-1)  # (B,) the greedy token's log-probability
            nll -= best.values.double().masked_fill(done, 0.0)
            prev = best.indices.masked_fill(done, PAD)  # (B,)
            tokens.append(prev)
            weights.append(w)
            done = done | (prev == EOS)
            if bool(done.all()):
                break
        out = torch.stack(tokens, dim=1)  # (B, T_out)
        decoded = (out != PAD).sum(-1).clamp_min(1)  # (B,) tokens decoded, end of sequence included
        return out, torch.stack(weights, dim=1) if need_weights else None, nll / decoded


@torch.no_grad()
def translate(model: Seq2Seq, texts: list[str], *, need_weights: bool = False) -> list[Translation]:
    """Strings in, decoded strings out (with their alignment when asked); one batch, greedy.

    Raises `UnknownCharacterError` for a character outside the source vocabulary.
    """
    vocab = model.config.source_vocab
    device = next(model.parameters()).device
    src, lengths = pad_batch([source_ids(text, vocab) for text in texts], device)  # (B, T), (B,)
    outputs = predict(model, Inputs(src, lengths), need_weights=need_weights)
    tokens, weights, surprise = outputs.out, outputs.weights, outputs.surprise  # (B, T_out), (B, T_out, T), (B,)
    results = []
    for i, text in enumerate(texts):
        decoded = target_text(tokens[i].tolist(), model.config.target_vocab)
        alignment = None if weights is None else weights[i, : len(decoded), : len(text)].float().cpu()
        results.append(Translation(decoded, list(decoded), list(text), alignment, float(surprise[i])))
    return results


# the family


def predict(model: Seq2Seq, inputs: Inputs, *, need_weights: bool = False, head_weights: bool = False) -> Outputs:
    """Source ids (B, T) and lengths (B,) -> greedy tokens (B, T_out), the alignment (B, T_out, T) when asked,
    and each output's surprise (B,). `translate` is this predictor with strings on both sides."""
    tokens, weights, surprise = model.generate(inputs.x, inputs.lengths, need_weights=need_weights)
    return Outputs(tokens, weights, surprise)


def novelty_scores(model: Seq2Seq, inputs: Inputs, outputs: Outputs | None = None) -> Tensor:
    """Each output's mean surprise per decoded character, end of sequence included."""
    return (outputs or predict(model, inputs)).surprise


FAMILY = Family("s2s", "Bahdanau encoder-decoder", Seq2SeqConfig, Seq2Seq, predict, novelty_scores)
