"""NW on large data: M prototypes of the training rows, weighted by how many rows each stands for."""

import json

import optuna
import pytest
import torch

from handlers.contract import Limits, adapter_for, answer_batch
from training.data.datasets import Dataset, Split
from training.nn import NWConfig, build_model, load_checkpoint, save_checkpoint
from training.nn.prototypes import MEMBER_ROWS, build_memory
from training.search.space import (
    ALL_ROWS_ALONE_UP_TO,
    ALL_ROWS_UP_TO,
    FIRST_PROTOTYPE_TRIAL,
    nw_epochs,
    nw_first_trial,
    nw_memory_choices,
    suggest_nw,
)


def data(n: int, classes: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=generator)
    y = (x[:, 0] * classes).long().clamp_max(classes - 1) if classes else torch.sin(4 * x[:, 0]) + x[:, 1]
    return x, y


def nw(x, y, n_keys, prototypes, classes=0, learn=True):
    config = NWConfig(in_features=3, n_keys=n_keys, bandwidth=3.0, prototypes=prototypes, n_classes=classes)
    config.learn_bandwidth = learn
    model = build_model("nw", config)
    model.x_scaler.fit(x)
    if not classes:
        model.y_scaler.fit(y)
    model.set_memory(x, y)
    return model


@pytest.mark.parametrize("classes", [0, 3])
def test_every_row_its_own_prototype_is_the_all_rows_model_leave_one_out_included(classes):
    x, y = data(200, classes)
    rows, protos = nw(x, y, 200, False, classes), nw(x, y, 200, True, classes)
    assert protos.config.n_keys == 200 and protos.counts.eq(1).all()
    index = torch.arange(0, 200, 7)
    with torch.no_grad():
        assert torch.allclose(protos(x[index], exclude=index)[0], rows(x[index], exclude=index)[0], atol=1e-5)
        assert torch.allclose(protos.eval()(x[:50])[0], rows.eval()(x[:50])[0], atol=1e-5)


def test_a_prototype_weighs_as_many_keys_as_rows_it_stands_for():
    x, y = data(150)
    twice_x, twice_y = torch.cat([x, x]), torch.cat([y, y])
    rows, protos = nw(twice_x, twice_y, 300, False), nw(twice_x, twice_y, 150, True)
    assert protos.config.n_keys == 150 and protos.counts.eq(2).all()
    index = torch.arange(0, 300, 11)
    with torch.no_grad():  # leaving a row out keeps its twin, in the all-rows model and in its prototype
        assert torch.allclose(
            protos(twice_x[index], exclude=index)[0], rows(twice_x[index], exclude=index)[0], atol=1e-5
        )
        assert torch.allclose(protos.eval()(x[:40])[0], rows.eval()(x[:40])[0], atol=1e-5)


def test_a_row_never_attends_to_a_prototype_made_only_of_itself():
    x, y = data(300)
    x[0] = 50.0  # an outlier: its own prototype
    model = nw(x, y, 32, True)
    alone = int(model.member_of[0])
    assert model.counts[alone] == 1
    with torch.no_grad():
        _, weights = model(x[:1], exclude=torch.tensor([0]), need_weights=True)
    assert weights[0, alone] == 0


def test_the_memory_summarizes_its_members_and_names_the_nearest():
    x, y = data(2000)
    memory = build_memory(x, y, 64, seed=3)
    assert memory.counts.sum() == 2000 and len(memory.keys) <= 64
    for j in (0, 7, len(memory.keys) - 1):
        members = memory.member_of == j
        assert memory.counts[j] == members.sum() and torch.isclose(memory.values[j], y[members].mean(), atol=1e-5)
        near = [i for i in memory.nearest[j].tolist() if i >= 0]
        assert len(near) == min(MEMBER_ROWS, int(members.sum())) and all(memory.member_of[i] == j for i in near)
        distances = (x[members] - memory.keys[j]).norm(dim=-1)
        assert (x[near] - memory.keys[j]).norm(dim=-1).max() <= distances.sort().values[len(near) - 1] + 1e-6
    again = build_memory(x, y, 64, seed=3)
    assert torch.equal(again.keys, memory.keys)  # seeded: the same prototypes every time


def test_a_prototype_model_saves_its_prototypes_and_not_its_training_rows(tmp_path):
    x, y = data(3000)
    model = nw(x, y, 128, True).eval()
    save_checkpoint(model, tmp_path / "c.pt")
    loaded, _ = load_checkpoint(tmp_path / "c.pt")
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    assert "member_of" not in payload["state_dict"] and payload["state_dict"]["keys"].shape == (128, 3)
    assert loaded.config.prototype_rows == model.config.prototype_rows and len(loaded.config.prototype_rows) == 128
    with torch.no_grad():
        assert torch.allclose(loaded(x[:20])[0], model(x[:20])[0])


def test_served_explanations_say_how_many_rows_a_prototype_stands_for_and_which_are_nearest():
    x, y = data(3000)
    model = nw(x, y, 128, True).eval()
    limits = Limits(explain_keys="index")
    body = json.dumps({"instances": [[0.2, 0.5, 0.5]]}).encode()
    (answer,) = answer_batch([body], [True], adapter_for(model, limits), limits, {"name": "t"})
    (explanation,) = json.loads(answer.body)["explanations"]
    assert "weights" not in explanation and len(explanation["top_keys"]) == limits.top_keys
    for key in explanation["top_keys"]:
        i = key["index"]
        assert set(key) == {"index", "stands_for", "nearest_rows"}
        assert key["stands_for"] == int(model.counts[i]) and key["nearest_rows"] == model.config.prototype_rows[i]
        assert all(model.member_of[r] == i for r in key["nearest_rows"])


def test_the_search_keeps_every_row_while_it_fits_and_offers_prototypes_beyond():
    assert nw_memory_choices(ALL_ROWS_ALONE_UP_TO) == ["all"]
    assert nw_memory_choices(10_000) == [256, 1024, 4096, "all"]
    assert nw_memory_choices(ALL_ROWS_UP_TO + 1) == [256, 1024, 4096]
    assert nw_memory_choices(3_000_000) == [256, 1024, 4096]
    assert nw_epochs(30, 6_000) == 30 and nw_epochs(30, 60_000) == 10 and nw_epochs(30, 600_000) == 3
    x, y = data(50)
    small = Dataset("toy", "regression", Split(x, y), Split(x, y), Split(x, y))
    trial = optuna.trial.FixedTrial({"parametric": False, "bandwidth": 1.0, "trend": False})
    setup = suggest_nw(trial, small, epochs=10, seed=0, device="cpu")  # the reference experiment: no new choice
    assert setup.model_config.n_keys == 50 and not setup.model_config.prototypes


def test_more_prototypes_than_rows_falls_back_to_every_row_and_says_so(caplog):
    x, y = data(40)
    model = nw(x, y, 256, True)
    assert model.config.n_keys == 40 and model.counts.eq(1).all()
    assert "every row is its own prototype" in caplog.text


def test_a_file_too_large_for_memory_is_refused_before_loading_with_what_it_would_need(tmp_path, monkeypatch):
    import psutil

    from training.data.tables import TableError, TableSpec, load_file_dataset

    path = tmp_path / "big.csv"
    path.write_text("a,y\n" + "".join(f"{i},{i % 7}\n" for i in range(5000)))
    available = type("Memory", (), {"available": 10_000})
    monkeypatch.setattr(psutil, "virtual_memory", lambda: available)
    read = []
    monkeypatch.setattr("pandas.read_csv", lambda *a, **k: read.append(a))
    with pytest.raises(TableError, match=r"big.csv is 0.0 GiB; loading it would need about 0.0 GiB"):
        load_file_dataset(TableSpec(path=str(path), target="y"))
    assert not read  # refused before a byte was parsed


def test_a_learned_prototype_model_trains_in_the_fit_loop_and_improves_on_its_start():
    from training.data.datasets import prepare_model
    from training.fit.loop import fit
    from training.search.space import rebuild

    x, y = data(6000)
    n = len(x)
    split = lambda s: Split(x[s], y[s])  # noqa: E731
    dataset = Dataset("toy", "regression", split(slice(0, 4800)), split(slice(4800, 5400)), split(slice(5400, n)))
    params = {"memory": 256, "parametric": True, "bandwidth": 0.3, "trend": False, "metric": "per_feature"}
    params |= {"optimizer": "adamw", "lr": 0.05, "weight_decay": 1e-4, "prototype_batch_size": 512}
    setup = rebuild("nw", params, dataset, epochs=4, seed=0, device="cpu")
    assert setup.model_config.prototypes and setup.fit_config.batch_size == 512
    model = prepare_model(build_model("nw", setup.model_config), dataset)
    result = fit(model, dataset, setup.fit_config)
    assert model.config.n_keys <= 256 and len(result.history) >= 1
    assert result.val_metrics["mse"] < result.initial_val_metrics["mse"]
    assert isinstance(model.keys, torch.nn.Parameter) and model.counts.sum() == 4800


def test_a_new_study_on_a_large_file_starts_with_the_measured_prototype_trial(tmp_path):
    from training.search.options import TuneOptions
    from training.search.study import tune

    assert nw_first_trial(ALL_ROWS_ALONE_UP_TO, 8, True) is None  # every row, as before: nothing enqueued
    assert nw_first_trial(60_000, 8, True) == FIRST_PROTOTYPE_TRIAL
    assert "trend" not in nw_first_trial(60_000, 8, False)  # classes: no trend to carry
    assert "metric" not in nw_first_trial(60_000, 1, True)  # one feature: one bandwidth
    x, y = data(7_000)  # 4,200 training rows: prototypes are searched
    path = tmp_path / "wide.csv"
    path.write_text("a,b,c,y\n" + "".join(f"{a:.4f},{b:.4f},{c:.4f},{t:.4f}\n" for (a, b, c), t in zip(x.tolist(), y)))
    stores = {"storage": f"sqlite:///{tmp_path / 'o.db'}", "tracking_uri": f"sqlite:///{tmp_path / 'm.db'}"}
    options = TuneOptions(model="nw", data=str(path), target="y", trials=1, epochs=1, conclude=False, **stores)
    tune(options)
    (first,) = optuna.load_study(study_name=options.name, storage=stores["storage"]).trials
    assert first.params == FIRST_PROTOTYPE_TRIAL and first.state == optuna.trial.TrialState.COMPLETE
