"""Issue 12: small data sets are cross-validated (k folds of train+validation) and refit on train+validation."""

import dataclasses
import warnings

import optuna
import pytest
import torch
from mlflow import MlflowClient

from training.data.datasets import load_dataset
from training.fit import cross_validation
from training.search.conclude import refit
from training.search.space import rebuild


@pytest.fixture(scope="module")
def diabetes():
    return load_dataset("diabetes", seed=0)


def test_cv_is_chosen_for_small_data_and_not_for_large(diabetes):
    assert cross_validation.protocol(diabetes) == "cv5"
    assert cross_validation.protocol(load_dataset("sine", seed=0)) == "holdout"  # the reference design, by name
    rows = cross_validation.SMALL_DATA_ROWS
    big = dataclasses.replace(diabetes, train=diabetes.train.subset(torch.zeros(rows, dtype=torch.long)))
    assert cross_validation.protocol(big) == "holdout"
    just_small = dataclasses.replace(big, train=big.train.subset(torch.arange(rows - len(diabetes.val) - 1)))
    assert cross_validation.protocol(just_small) == "cv5"


def test_folds_are_deterministic_disjoint_and_cover_train_and_validation(diabetes):
    first, again = cross_validation.folds(diabetes), cross_validation.folds(diabetes)
    assert len(first) == cross_validation.N_FOLDS
    pooled = torch.cat([diabetes.train.x, diabetes.val.x])
    held_out = torch.cat([f.val.x for f in first])
    assert len(held_out) == len(pooled) and torch.unique(held_out, dim=0).shape == torch.unique(pooled, dim=0).shape
    for fold, same in zip(first, again):
        assert torch.equal(fold.val.x, same.val.x) and torch.equal(fold.train.y, same.train.y)
        assert len(fold.train) + len(fold.val) == len(pooled)
        assert not (fold.train.x[:, None, :] == fold.val.x[None, :, :]).all(-1).any()  # no row on both sides
        assert torch.equal(fold.test.x, diabetes.test.x)  # the test split is never in a fold


def test_refit_of_a_cross_validated_trial_uses_train_and_validation(diabetes):
    params = {"parametric": True, "bandwidth": 0.5, "metric": "low_rank", "rank": 1, "optimizer": "adamw"}
    params |= {"lr": 0.05, "weight_decay": 1e-3, "batch_size": 64}
    holdout, _ = refit("nw", params, diabetes, epochs=3)  # tuned before `trend` was a choice: rebuilt without
    assert holdout.config.n_keys == len(diabetes.train) and not holdout.config.trend
    model, history = refit("nw", params, diabetes, epochs=30, refit_epochs=4)
    assert model.config.n_keys == len(diabetes.train) + len(diabetes.val)
    assert torch.allclose(model.x_scaler.inverse(model.keys[len(diabetes.train) :]), diabetes.val.x, atol=1e-3)
    assert len(history.history) == 4  # the folds' mean best epoch, no early stop on in-sample rows


@pytest.mark.parametrize("per_feature", [True, False])
def test_a_trial_tuned_before_metric_learning_and_the_trend_is_rebuilt_as_it_was(diabetes, per_feature):
    """Its parameters named `per_feature` (now `metric`) and lacked weight decay and the trend."""
    old = {"parametric": True, "bandwidth": 0.5, "per_feature": per_feature, "optimizer": "sgd", "lr": 0.05}
    old["batch_size"] = 64
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # nothing to say to the user about a faithful rebuild
        model, _ = refit("nw", old, diabetes, epochs=2)
        setup = rebuild("nw", old, diabetes, epochs=2, seed=0, device="cpu")
    assert model.config.per_feature == per_feature and not model.config.rank and not model.config.trend
    assert model.w.shape == ((diabetes.in_features,) if per_feature else (1,))
    assert setup.fit_config.weight_decay == 0.0


def test_tuning_diabetes_cross_validates_and_registers_a_champion(stores):
    from training.search.options import TuneOptions
    from training.search.study import tune

    result = tune(
        TuneOptions(
            model="nw",
            dataset="diabetes",
            trials=3,
            epochs=3,
            storage=stores["storage"],
            tracking_uri=stores["tracking_uri"],
            progress=False,
        )
    )
    client = MlflowClient(stores["tracking_uri"], stores["tracking_uri"])
    assert str(client.get_model_version_by_alias("nw-diabetes", "champion").version) == result.conclusion.model_version
    study = optuna.load_study(study_name="nw-diabetes", storage=stores["storage"])
    assert study.user_attrs["protocol"] == "cv5"
    assert client.get_run(result.parent_run_id).data.params["protocol"] == "cv5"
    assert client.get_run(result.parent_run_id).data.tags["protocol"] == "cv5"
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(t.user_attrs["protocol"] == "cv5" and "refit_epochs" in t.user_attrs for t in done)
    trial_run = client.get_run(done[0].user_attrs["mlflow_run_id"])
    folds = client.get_metric_history(trial_run.info.run_id, "cv_val_mse")
    assert [m.step for m in folds] == list(range(1, cross_validation.N_FOLDS + 1))
    assert folds[-1].value == pytest.approx(done[0].value, rel=1e-6)  # the trial's value is the folds' mean
    assert set(result.conclusion.test_metrics) >= {"mse", "r2"}
    card = client.get_model_version("nw-diabetes", result.conclusion.model_version).description
    assert f"{cross_validation.N_FOLDS}-fold cross-validation on train+validation" in card  # the model card


def test_peers_are_selected_by_seeded_cv_on_train_and_validation_and_refit_on_both():
    import numpy as np
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

    from benchmarks.quality import select_by_cv, select_on_validation

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    y = x @ rng.normal(size=8) + rng.normal(scale=3.0, size=300)
    splits = [(x[:150], y[:150]), (x[150:200], y[150:200]), (x[200:], y[200:])]
    grid = {"alpha": np.geomspace(1e-2, 1e4, 13)}
    score, params = select_by_cv(Ridge, grid, splits, r2_score, maximize=True)
    reference = GridSearchCV(Ridge(), grid, cv=KFold(5, shuffle=True, random_state=0), scoring="r2").fit(
        x[:200], y[:200]
    )
    assert params == reference.best_params_
    assert score == pytest.approx(r2_score(y[200:], Ridge(**params).fit(x[:200], y[:200]).predict(x[200:])))
    assert select_by_cv(Ridge, grid, splits, r2_score, maximize=True) == (score, params)  # seeded folds
    held_out, _ = select_on_validation(Ridge, grid, splits, r2_score, maximize=True)
    assert held_out != score  # the other protocol: another model (refit on train only)

    labels = (x[:, 0] + rng.normal(scale=0.5, size=300) > 0).astype(int)
    splits = [(x[:150], labels[:150]), (x[150:200], labels[150:200]), (x[200:], labels[200:])]
    grid = {"C": np.geomspace(1e-3, 10, 5)}
    _, params = select_by_cv(LogisticRegression, grid, splits, accuracy_score, maximize=True)
    stratified = StratifiedKFold(5, shuffle=True, random_state=0)
    reference = GridSearchCV(LogisticRegression(), grid, cv=stratified).fit(x[:200], labels[:200])
    assert params == reference.best_params_


def test_the_epoch_is_chosen_by_the_folds_mean_curve_not_each_folds_own_best(diabetes):
    from training.fit.loop import FitResult

    # Each fold is best at another epoch (its own held-out rows would flatter it); epoch 2 is best on average.
    curves = iter([[9, 1, 5, 9], [9, 5, 1, 9], [9, 9, 2, 1], [9, 5, 3, 5], [9, 5, 4, 5]])
    reported = []

    def train_fold(fold):
        mse = next(curves)
        history = [{"epoch": e, "val_mse": v} for e, v in enumerate(mse[1:], 1)]
        return FitResult(history, min(range(1, 4), key=lambda e: mse[e]), {"mse": min(mse)}, {"mse": mse[0]})

    result = cross_validation.cross_validate(diabetes, "mse", "minimize", train_fold, lambda *a: reported.append(a))
    assert result.best_epoch == 2 and result.val_metrics["mse"] == pytest.approx(3.0)  # not the folds' bests, 1.6
    assert [step for step, _, _ in reported] == [1, 2, 3, 4, 5]
    assert reported[0][2] == 1 and reported[-1][2] == pytest.approx(3.0)  # the best of the mean curve so far
