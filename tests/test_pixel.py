"""The pixel self-attention model, its image view of digits, and its serving adapter in-process."""

import json

import optuna
import pandas as pd
import pytest
import torch

from handlers.contract import Limits, adapter_for, agrees, answer_batch
from handlers.images import brightest
from training.data.datasets import as_images, load_dataset, prepare_model
from training.data.frames import example_frame, predict_frame
from training.nn import PixelConfig, PixelSelfAttention, build_model, load_checkpoint, save_checkpoint
from training.nn.pixel import random_shift
from training.search.options import TuneError, TuneOptions
from training.search.space import default_epochs, suggest

INFO = {"name": "pixel-toy", "version": "1", "run_id": "r"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def model(digits):
    """An untrained but prepared (scaler fitted) pixel model with a non-zero gamma, so attention shows."""
    torch.manual_seed(0)
    config = PixelConfig(channels=8, depth=2, attention_at=2, reduction=2, value_range=[0.0, 16.0])
    built = prepare_model(build_model("pixel", config), digits).eval()
    with torch.no_grad():
        built.attention.gamma.fill_(0.5)
    return built


def ask(model, bodies, explain=False, limits=None):
    limits = limits or Limits()
    raw = [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]
    answers = answer_batch(raw, [explain] * len(raw), adapter_for(model, limits), limits, INFO)
    return [(a.status, json.loads(a.body)) for a in answers]


# the block


def test_the_block_is_exactly_the_identity_while_gamma_is_zero_and_its_rows_sum_to_one():
    torch.manual_seed(0)
    block = PixelSelfAttention(channels=16, reduction=4)
    x = torch.randn(3, 16, 5, 7)
    out, weights = block(x, need_weights=True)
    assert float(block.gamma.detach()) == 0.0 and torch.equal(out, x)
    assert weights.shape == (3, 35, 35) and bool((weights >= 0).all())
    assert torch.allclose(weights.sum(-1), torch.ones(3, 35), atol=1e-6)


def test_gamma_learns_from_zero_and_the_fused_path_equals_the_direct_one():
    torch.manual_seed(0)
    block = PixelSelfAttention(channels=8, reduction=2)
    x = torch.randn(2, 8, 4, 4)
    block(x)[0].pow(2).sum().backward()
    assert float(block.gamma.grad.abs()) > 0  # the identity start still sends gradient to gamma
    with torch.no_grad():
        block.gamma.fill_(0.7)
    fused, none = block(x)
    direct, weights = block(x, need_weights=True)
    assert none is None and not torch.equal(fused, x)
    assert torch.allclose(fused, direct, atol=1e-5)
    # by hand: y_i = x_i + gamma * sum_j alpha_ij v_j
    v = block.value(x).flatten(2)  # (B, C, N)
    by_hand = x + 0.7 * torch.einsum("bij,bcj->bci", weights, v).reshape(x.shape)
    assert torch.allclose(direct, by_hand, atol=1e-5)


def test_model_shapes_and_the_weights_it_returns(model):
    images = torch.rand(4, 1, 8, 8) * 16
    logits, none = model(images)
    assert logits.shape == (4, 10) and none is None
    same, weights = model(images, need_weights=True)
    assert torch.allclose(logits, same, atol=1e-5)
    assert weights["attention"].shape == (4, 64, 64) and float(weights["gamma"]) == 0.5
    assert torch.allclose(weights["attention"].sum(-1), torch.ones(4, 64), atol=1e-5)


@pytest.mark.parametrize(
    "fields", [dict(depth=2, attention_at=3), dict(attention_at=0), dict(value_range=[16, 0]), dict(shift=8)]
)
def test_configs_that_cannot_work_are_refused(fields):
    with pytest.raises(ValueError):
        PixelConfig(**fields)


def test_random_shifts_move_whole_images_in_training_only(model):
    torch.manual_seed(0)
    x = torch.rand(16, 1, 8, 8)
    moved = random_shift(x, 1)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    for image, original in zip(moved, padded):
        assert any(torch.equal(image, original[:, dy : dy + 8, dx : dx + 8]) for dy in range(3) for dx in range(3))
    shifted = build_model("pixel", PixelConfig(channels=4, depth=1, shift=1)).eval()
    assert torch.equal(shifted(x)[0], shifted(x)[0])  # eval: no random moves


def test_a_checkpoint_rebuilds_the_same_model(model, tmp_path):
    save_checkpoint(model, tmp_path / "checkpoint.pt")
    loaded, _ = load_checkpoint(tmp_path / "checkpoint.pt")
    images = torch.rand(3, 1, 8, 8) * 16
    assert loaded.config == model.config and torch.equal(loaded(images)[0], model(images)[0])


# data and search space


def test_digits_as_images_are_the_same_rows_of_the_same_splits(digits, model):
    for split in (digits.train, digits.val, digits.test):
        images = as_images(split)
        assert images.shape == (len(split), 1, 8, 8) and torch.equal(images[:, 0], split.x)
    pixels = digits.train.x.flatten()
    assert torch.allclose(model.x_scaler.mean, pixels.mean()[None]) and float(model.x_scaler.std) > 1
    with pytest.raises(ValueError, match="same length"):
        as_images(load_dataset("adding", n_train=20, n_val=5, n_test=5, max_len=30).train)


def test_the_search_space_rebuilds_a_trial_and_pixel_takes_only_images(digits):
    params = dict(depth=3, channels=16, attention_at="last", reduction=4, dropout=0.1, shift=1)
    params |= dict(lr=3e-3, weight_decay=1e-3, batch_size=64)
    setup = suggest("pixel", optuna.trial.FixedTrial(params), digits, epochs=5, seed=0, device="cpu")
    assert setup.model_kind == "pixel" and setup.model_config.attention_at == 3
    assert setup.model_config.value_range == [0.0, 16.0] and setup.fit_config.batch_size == 64
    assert default_epochs("pixel", "digits") == 40 and default_epochs("mha", "digits") == 20
    TuneOptions(model="pixel", dataset="digits").validate()
    TuneOptions(model="mha", dataset="digits").validate()
    with pytest.raises(TuneError, match=r"takes image data \(digits\)"):
        TuneOptions(model="pixel", dataset="sine").validate()


def test_the_mlflow_form_takes_an_image_column(digits, model):
    frame = example_frame(digits, model)
    assert list(frame.columns) == ["image"] and len(frame["image"][0]) == 8
    expected = model(as_images(digits.test)[:3])[0].argmax(-1)
    assert predict_frame(model, frame).tolist() == expected.tolist()
    flat_channels = pd.DataFrame({"image": [[row] for row in digits.test.x[:2].tolist()]})  # (1, H, W) cells
    assert predict_frame(model, flat_channels).tolist() == expected[:2].tolist()


# the adapter


def test_served_predictions_equal_the_model_nested_or_flat(digits, model):
    images = digits.test.x[:5]
    (status, body), (_, flat) = ask(model, [{"instances": images.tolist()}, {"instances": images.flatten(1).tolist()}])
    logits = model(images[:, None])[0]
    assert status == 200 and body["predictions"] == flat["predictions"]
    for prediction, row in zip(body["predictions"], logits):
        assert prediction["label"] == int(row.argmax())
        assert prediction["probabilities"] == pytest.approx(torch.softmax(row, -1).tolist(), abs=1e-5)


def test_explanations_are_attention_maps_of_the_query_pixels_consistent_with_predictions(digits, model):
    images = digits.test.x[:3]
    ((_, predicted),) = ask(model, [{"instances": images.tolist()}])
    (_, explained), (_, default) = ask(
        model, [{"instances": images.tolist(), "queries": [[2, 3], [7, 0]]}, {"instances": images.tolist()}], True
    )
    attention = model(images[:, None], need_weights=True)[1]["attention"]  # (B, 64, 64)
    for i, item in enumerate(explained["explanations"]):
        assert agrees(item["prediction"], predicted["predictions"][i])  # the contract's tolerance
        assert item["gamma"] == 0.5 and item["queries"] == [[2, 3], [7, 0]]
        maps = torch.tensor(item["attention"], dtype=torch.float64)
        assert maps.shape == (2, 8, 8) and torch.allclose(maps.sum((1, 2)), torch.ones(2, dtype=torch.float64))
        assert torch.allclose(maps[0].flatten(), attention[i, 2 * 8 + 3].double(), atol=1e-6)
        assert sum(map(sum, item["attended"])) == pytest.approx(1.0, abs=1e-5)
    for image, item in zip(images, default["explanations"]):
        row, col = item["queries"][0]
        assert image[row, col] == image.max() and (row, col) == brightest(image[None])


BAD_IMAGES = [
    ({"instances": ["digit"]}, 400, "invalid instance", "instances[0] must be an image"),
    ({"instances": [[[0] * 8] * 7]}, 400, "wrong image size", "instances[0] has 7 rows"),
    ({"instances": [[[0] * 8] * 7 + [[0] * 9]]}, 400, "wrong image size", "instances[0][7] has 9 pixels"),
    ({"instances": [[0] * 63]}, 400, "wrong image size", "instances[0] has 63 numbers"),
    (
        {"instances": [[[0] * 8] * 7 + [[0] * 7 + ["1"]]]},
        400,
        "invalid instance",
        "instances[0][7][7] must be a number",
    ),
    ({"instances": [[[0] * 8] * 7 + [[0] * 7 + [True]]]}, 400, "invalid instance", "got true"),
    ({"instances": [[[0] * 8] * 7 + [[0] * 7 + [17]]]}, 400, "number out of range", "accepts [0, 16]"),
    ({"instances": [[-1] + [0] * 63]}, 400, "number out of range", "instances[0][0] feature 'pixel' is -1"),
    ({"instances": [[1e308] * 64]}, 400, "number out of range", "is 1e+308"),
    ({"instances": [[10**400] + [0] * 63]}, 400, "number out of range", "about 401 digits"),
    (b'{"instances": [[' + b",".join([b"0"] * 63 + [b"NaN"]) + b"]]}", 400, "non-finite number", "instances[0][63]"),
]


@pytest.mark.parametrize("body,status,error,detail", BAD_IMAGES)
def test_bad_images_fail_alone_with_a_named_error(digits, model, body, status, error, detail):
    good = {"instances": digits.test.x[:1].tolist()}
    answers = ask(model, [good, body, good])
    assert [a[0] for a in answers] == [200, status, 200]
    assert answers[1][1]["error"] == error and detail in answers[1][1]["detail"], answers[1][1]


@pytest.mark.parametrize(
    "queries,status,error",
    [
        ([], 400, "invalid queries"),
        ([[8, 0]], 400, "invalid queries"),
        ([[1.0, 2]], 400, "invalid queries"),
        ([[0, 0]] * 65, 413, "too many queries"),
        ("center", 400, "invalid queries"),
    ],
)
def test_bad_queries_are_refused_on_explanations(digits, model, queries, status, error):
    body = {"instances": digits.test.x[:1].tolist(), "queries": queries}
    ((got, answer),) = ask(model, [body], explain=True)
    assert (got, answer["error"]) == (status, error), answer


def test_explanations_over_the_response_budget_are_a_413_and_smaller_ones_pass(digits, model):
    every_pixel = [[r, c] for r in range(8) for c in range(8)]
    images = digits.test.x[:1].tolist()
    limits = Limits(max_response_bytes=200_000)
    ((status, answer),) = ask(model, [{"instances": images * 40, "queries": every_pixel}], True, limits)
    assert (status, answer["error"]) == (413, "response too large") and "fewer queries" in answer["detail"]
    ((status, answer),) = ask(model, [{"instances": images, "heads": True}], True, limits)
    assert (status, answer["error"]) == (400, "invalid heads") and "no heads" in answer["detail"]
    ((status, answer),) = ask(model, [{"instances": images * 2, "queries": every_pixel}], True, limits)
    assert status == 200 and len(answer["explanations"][1]["attention"]) == 64
