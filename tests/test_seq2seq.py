"""The Bahdanau seq2seq model, the dates data set and their place in the fit loop and search space."""

import json
import random
from datetime import date

import optuna
import pytest
import torch

from training.data import dates
from training.data.datasets import load_dataset, split_texts
from training.fit.loop import FitConfig, evaluate, fit
from training.nn import Seq2SeqConfig, build_model, load_checkpoint, save_checkpoint, translate
from training.nn.seq2seq import EOS, PAD, UnknownCharacterError, pad_batch, source_ids
from training.search.space import suggest_s2s

SMALL = dict(n_train=4000, n_val=300, n_test=300)
EXAMPLES = {
    "23 Nov 2026": "2026-11-23",
    "11/23/26": "2026-11-23",
    "Monday, November 23, 2026": "2026-11-23",
    "23.11.2026": "2026-11-23",
    "2026-11-23": "2026-11-23",
    "Nov 23rd, 2026": "2026-11-23",
}


def tiny_config(**overrides):
    base = dict(source_vocab=dates.SOURCE_CHARS, target_vocab=dates.TARGET_CHARS, embed_size=8, hidden_size=16)
    return Seq2SeqConfig(**{**base, "attention_size": 16, **overrides})


def batch(texts):
    return pad_batch([source_ids(t, dates.SOURCE_CHARS) for t in texts])


@pytest.fixture(scope="module")
def small():
    return load_dataset("dates", **SMALL)


@pytest.fixture(scope="module")
def trained(small):
    """A small model trained for a few seconds on 4000 dates."""
    torch.manual_seed(0)
    config = tiny_config(
        source_vocab=list(small.source_vocab),
        target_vocab=list(small.target_vocab),
        embed_size=32,
        hidden_size=64,
        attention_size=64,
    )
    model = build_model("s2s", config)
    result = fit(model, small, FitConfig(epochs=6, lr=1e-2, batch_size=64))
    return model, result


# the model


def test_shapes_and_padding_never_attended():
    torch.manual_seed(0)
    model = build_model("s2s", tiny_config(n_layers=2)).eval()
    src, lengths = batch(["23 Nov 2026", "1.2.26", "Monday, November 23, 2026"])  # (3, 25), (3,)
    target = torch.randint(3, 14, (3, 11))
    logits, weights = model(src, lengths, target, need_weights=True)
    assert logits.shape == (3, 11, 14) and weights.shape == (3, 11, src.shape[1])
    for i, n in enumerate(lengths.tolist()):
        assert torch.all(weights[i, :, n:] == 0)  # padding gets exactly zero weight
        assert torch.allclose(weights[i, :, :n].sum(-1), torch.ones(11), atol=1e-5)
    tokens, alignment, _ = model.generate(src, lengths, max_len=5, need_weights=True)
    assert tokens.shape[0] == 3 and tokens.shape[1] <= 5 and alignment.shape == (3, tokens.shape[1], src.shape[1])
    assert torch.all(alignment[0, :, lengths[0] :] == 0)


def test_padding_does_not_change_a_translation():
    torch.manual_seed(0)
    model = build_model("s2s", tiny_config()).eval()
    alone = model.generate(*batch(["1.2.26"]), max_len=11, need_weights=True)
    padded = model.generate(*batch(["1.2.26", "the 23rd of November, 2026"]), max_len=11, need_weights=True)
    steps = alone[0].shape[1]
    assert torch.equal(alone[0][0], padded[0][0, :steps])
    assert torch.allclose(alone[1][0], padded[1][0, :steps, :6], atol=1e-5)


def test_teacher_forcing_zero_feeds_back_the_models_own_guesses():
    torch.manual_seed(0)
    model = build_model("s2s", tiny_config(teacher_forcing=0.0)).train()  # no dropout: train mode is deterministic
    src, lengths = batch(["23 Nov 2026", "11/23/26"])
    target = torch.full((2, 6), 5)
    own = model(src, lengths, target)[0].argmax(-1)  # (2, 6)
    greedy, _, _ = model.generate(src, lengths, max_len=6)
    steps = greedy.shape[1]
    stopped = (greedy == EOS).cumsum(-1) > 0  # after its end, greedy pads; compare up to (and with) the end
    assert torch.equal(own[:, :steps].masked_fill(stopped & (greedy == PAD), PAD), greedy)
    forced = model.eval()(src, lengths, target)[0].argmax(-1)
    assert forced.shape == own.shape  # eval mode always teaches; the outputs may differ, the shapes never


def test_without_attention_the_context_is_one_fixed_key():
    torch.manual_seed(0)
    model = build_model("s2s", tiny_config(attention=False)).eval()
    src, lengths = batch(["23 Nov 2026", "1.2.26"])
    logits, weights = model(src, lengths, torch.full((2, 4), 5), need_weights=True)
    assert logits.shape == (2, 4, 14) and weights.shape == (2, 4, 1) and torch.all(weights == 1)


def test_config_validates_and_checkpoint_round_trips_with_weights_only(tmp_path):
    with pytest.raises(ValueError, match="single characters"):
        Seq2SeqConfig(source_vocab=["ab"], target_vocab=["1"])
    with pytest.raises(ValueError, match="duplicate"):
        Seq2SeqConfig(source_vocab=["a", "a"], target_vocab=["1"])
    with pytest.raises(ValueError, match="teacher_forcing"):
        tiny_config(teacher_forcing=1.5)
    torch.manual_seed(0)
    model = build_model("s2s", tiny_config()).eval()
    save_checkpoint(model, tmp_path / "s2s.pt", {"name": "s2s-toy"})
    payload = torch.load(tmp_path / "s2s.pt", weights_only=True)
    assert json.loads(payload["config"])["source_vocab"] == dates.SOURCE_CHARS  # the vocabulary travels with it
    loaded, metadata = load_checkpoint(tmp_path / "s2s.pt")
    texts = list(EXAMPLES)
    assert metadata == {"name": "s2s-toy"} and loaded.config == model.config
    assert [t.text for t in translate(loaded, texts)] == [t.text for t in translate(model, texts)]


def test_unknown_characters_are_named_with_their_position():
    with pytest.raises(UnknownCharacterError) as error:
        source_ids("23 Nov 2026 é", dates.SOURCE_CHARS)
    assert error.value.char == "é" and error.value.position == 12 and "'é' at position 12" in str(error.value)


# the data set


def test_dates_are_deterministic_and_splits_share_no_input():
    a, b, c = (dates.generate_pairs(seed, (300, 100, 100)) for seed in (0, 0, 1))
    assert a == b and a != c
    inputs = [{text for text, _ in split} for split in a]
    assert (
        len(inputs[0]) == 300 and not inputs[0] & inputs[1] and not inputs[0] & inputs[2] and not inputs[1] & inputs[2]
    )
    for text, iso in a[0]:
        assert len(text) <= dates.MAX_SOURCE_LEN and date.fromisoformat(iso)
        assert dates.FIRST <= date.fromisoformat(iso) <= dates.LAST


def test_ambiguous_forms_follow_one_convention():
    forms = dates._formats(date(2026, 11, 12), random.Random(0))
    assert "11/12/26" in forms or "11/12/2026" in forms  # slashes: month/day/year
    assert "12.11.2026" in forms  # dots: day.month.year
    assert "2026/11/12" in forms and "2026-11-12" in forms  # year first: year, month, day
    assert dates.yy(2049) == "49" and dates.LAST.year == 2049 and dates.FIRST.year == 1950  # one century per yy


def test_loaded_splits_decode_back_to_their_strings(small):
    texts, targets = split_texts(small.test, small)
    assert small.kind == "text" and small.task == "translation" and len(texts) == 300
    assert all(len(t) == 10 and t[4] == "-" for t in targets)
    assert (small.test.y[:, -1] == EOS).all()
    assert not set(texts) & set(split_texts(small.train, small)[0])


# training and tuning


def test_a_small_trained_model_decodes_dates(small, trained):
    model, result = trained
    assert {"val_exact_match", "val_token_accuracy", "val_loss", "train_loss"} <= set(result.history[-1])
    test = evaluate(model, small.test, small.task)
    assert test["exact_match"] > 0.95 and test["token_accuracy"] > 0.98
    results = translate(model, list(EXAMPLES), need_weights=True)
    assert sum(r.text == iso for r, iso in zip(results, EXAMPLES.values())) >= 5
    for r, text in zip(results, EXAMPLES):
        assert r.weights.shape == (len(r.text), len(text)) and r.input_tokens == list(text)
        assert torch.allclose(r.weights.sum(-1), torch.ones(len(r.text)), atol=1e-5)


def test_year_digits_attend_to_the_year(trained):
    """The alignment is meaningful: the last year digit attends mostly to the input's last digit."""
    model, _ = trained
    (result,) = translate(model, ["Monday, November 23, 2026"], need_weights=True)
    assert result.text == "2026-11-23"
    assert int(result.weights[3].argmax()) == len("Monday, November 23, 2026") - 1


def test_search_space_rebuilds_the_trial_exactly(small):
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    setup = suggest_s2s(trial, small, epochs=3, seed=0, device="cpu")
    rebuilt = suggest_s2s(optuna.trial.FixedTrial(trial.params), small, epochs=3, seed=0, device="cpu")
    assert setup == rebuilt and setup.model_kind == "s2s"
    assert setup.model_config.source_vocab == dates.SOURCE_CHARS
    assert set(trial.params) == {
        "embed_size",
        "hidden_size",
        "attention_size",
        "n_layers",
        "dropout",
        "teacher_forcing",
        "lr",
        "batch_size",
    }
