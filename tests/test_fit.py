import math

import pytest
import torch

from training.data.datasets import load_dataset, prepare_model
from training.fit.loop import FitConfig, NonFiniteLossError, evaluate, fit, resolve_device
from training.nn import NWConfig, SequenceConfig, build_model, load_checkpoint, save_checkpoint


def mha_for(data, **overrides):
    config = SequenceConfig(in_features=data.in_features, out_features=data.n_classes or 1, task=data.task, **overrides)
    return prepare_model(build_model("mha", config), data)


def test_parametric_nw_on_diabetes_beats_the_mean_predictor():
    data = load_dataset("diabetes")
    model = prepare_model(
        build_model("nw", NWConfig(in_features=10, n_keys=len(data.train), per_feature=True, bandwidth=0.5)), data
    )
    result = fit(model, data, FitConfig(epochs=30, lr=0.05))
    baseline = ((data.train.y.mean() - data.test.y) ** 2).mean().item()
    assert evaluate(model, data.test, data.task)["mse"] < 0.7 * baseline
    assert result.history and "val_mse" in result.history[0]


def test_mha_on_adding_beats_the_constant_predictor():
    data = load_dataset("adding", n_train=600, n_val=100, n_test=100, max_len=30)
    model = mha_for(data, d_model=32, n_layers=1)
    fit(model, data, FitConfig(epochs=12, lr=3e-3, batch_size=32))
    baseline = ((data.train.y.mean() - data.test.y) ** 2).mean().item()
    assert evaluate(model, data.test, data.task)["mse"] < 0.3 * baseline


def test_mha_on_digits_beats_the_majority_class():
    data = load_dataset("digits")
    model = mha_for(data, n_layers=1)
    fit(model, data, FitConfig(epochs=5, lr=3e-3))
    majority = (data.test.y == data.train.y.mode().values).float().mean().item()
    assert evaluate(model, data.test, data.task)["accuracy"] > majority + 0.5


def test_epoch_callback_sees_every_epoch_and_can_stop_training():
    data = load_dataset("sine")
    model = prepare_model(build_model("nw", NWConfig(bandwidth=1.0)), data)
    seen = []

    class Stop(Exception):
        pass

    def on_epoch(epoch, row):
        seen.append((epoch, row["val_mse"]))
        if epoch == 3:
            raise Stop

    with pytest.raises(Stop):
        fit(model, data, FitConfig(epochs=10, lr=0.1), on_epoch)
    assert [e for e, _ in seen] == [1, 2, 3] and all(math.isfinite(v) for _, v in seen)


def test_early_stopping_restores_the_best_validation_state():
    data = load_dataset("sine")
    model = prepare_model(build_model("nw", NWConfig(bandwidth=1.0)), data)
    result = fit(model, data, FitConfig(epochs=200, lr=0.5, optimizer="sgd", patience=3))
    assert len(result.history) < 200
    best = min(row["val_mse"] for row in result.history)
    assert evaluate(model, data.val, data.task)["mse"] == pytest.approx(best, rel=1e-5)


def test_diverging_loss_raises_a_named_error():
    data = load_dataset("sine")
    model = prepare_model(build_model("nw", NWConfig(bandwidth=1.0)), data)
    with torch.no_grad():
        model.values.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="epoch 1"):
        fit(model, data, FitConfig(epochs=2))


def test_fit_is_deterministic_under_a_seed():
    data = load_dataset("digits")
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = mha_for(data, n_layers=1, d_model=16)
        runs.append(fit(model, data, FitConfig(epochs=2, seed=3)).history)
    assert runs[0] == runs[1]


def test_cpu_is_chosen_without_cuda_and_cuda_is_refused_by_name():
    if torch.cuda.is_available():
        pytest.skip("machine has CUDA")
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")


def test_checkpoint_round_trip_with_weights_only(tmp_path):
    data = load_dataset("digits")
    model = mha_for(data, n_layers=1, d_model=16).eval()
    sha = save_checkpoint(model, tmp_path / "model.pt", {"run_id": "abc"})
    loaded, meta = load_checkpoint(tmp_path / "model.pt")
    assert meta == {"run_id": "abc"} and len(sha) == 64
    x, lengths = data.test.x[:5], data.test.lengths[:5]
    assert torch.equal(model(x, lengths)[0], loaded(x, lengths)[0])
    payload = torch.load(tmp_path / "model.pt", weights_only=True)  # no pickled code inside
    assert isinstance(payload["config"], str)
