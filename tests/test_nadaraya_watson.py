import pytest
import torch

from training.data.datasets import load_dataset, prepare_model
from training.fit.loop import FitConfig, evaluate, fit
from training.nn import NadarayaWatson, NWConfig, build_model


def random_nw(n_keys: int, dims: int, per_feature: bool, seed: int = 0) -> NadarayaWatson:
    torch.manual_seed(seed)
    model = NadarayaWatson(NWConfig(in_features=dims, n_keys=n_keys, per_feature=per_feature))
    with torch.no_grad():
        model.w.uniform_(0.5, 3.0)
    model.set_memory(torch.randn(n_keys, dims), torch.randn(n_keys))
    return model


@pytest.mark.parametrize(
    "n_queries,n_keys,dims,per_feature",
    [
        (1, 1, 1, False),
        (50, 50, 1, False),
        (333, 1000, 1, False),
        (64, 257, 3, True),
        (200, 500, 10, False),
    ],
)
def test_fused_path_equals_direct_path(n_queries, n_keys, dims, per_feature):
    model = random_nw(n_keys, dims, per_feature)
    queries = torch.randn(n_queries, dims)
    fused, _ = model(queries)
    direct, weights = model(queries, need_weights=True)  # weights force the direct path
    assert torch.allclose(fused, direct, atol=1e-5)
    assert torch.allclose(weights.sum(-1), torch.ones(n_queries), atol=1e-5)


def test_chunked_queries_equal_one_pass():
    model = random_nw(300, 2, False)
    queries = torch.randn(1000, 2)
    whole, _ = model(queries)
    model.config.chunk_size = 97
    chunked, _ = model(queries)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_leave_one_out_never_attends_to_itself():
    model = random_nw(20, 1, False)
    model.config.fused = False
    index = torch.arange(20)
    _, weights = model(model.keys, exclude=index, need_weights=True)
    assert torch.equal(weights.diagonal(), torch.zeros(20))
    model.config.fused = True
    fused, _ = model(model.keys, exclude=index)
    direct = torch.softmax(model.scores(model.keys, ~torch.eye(20, dtype=torch.bool)), -1) @ model.values
    assert torch.allclose(fused, direct, atol=1e-5)


def test_laplacian_kernel_weights_are_a_distribution():
    model = NadarayaWatson(NWConfig(n_keys=10, kernel="laplacian", bandwidth=1.0))
    model.set_memory(torch.linspace(0, 1, 10), torch.linspace(0, 1, 10))
    pred, weights = model(torch.tensor([0.0, 1.0]), need_weights=True)
    assert torch.allclose(weights.sum(-1), torch.ones(2))
    assert pred[0] < pred[1]


def test_unknown_kernel_is_rejected_by_name():
    with pytest.raises(ValueError, match="kernel"):
        NWConfig(kernel="cosine")


def test_reference_experiment_parametric_beats_nonparametric_beats_average():
    data = load_dataset("sine", seed=0)
    average = ((data.train.y.mean() - data.test.y) ** 2).mean().item()
    fixed = prepare_model(build_model("nw", NWConfig(learn_bandwidth=False, bandwidth=1.0)), data)
    torch.manual_seed(0)
    learned = prepare_model(build_model("nw", NWConfig()), data)
    recipe = FitConfig(epochs=5, lr=0.5, optimizer="sgd", batch_size=50, loss_reduction="sum", patience=0, grad_clip=0)
    fit(learned, data, recipe)
    nonparametric = evaluate(fixed, data.test, "regression")["mse"]
    parametric = evaluate(learned, data.test, "regression")["mse"]
    assert parametric < nonparametric < average
    assert average == pytest.approx(0.905, abs=0.01)  # the seeds' reproduction
    assert nonparametric == pytest.approx(0.428, abs=0.01)


@pytest.mark.parametrize("bandwidth", [0.5, 3.0, 50.0])
def test_predictions_stay_exact_for_large_bandwidth_times_data_radius(bandwidth):
    """Issue 12's precision case: w = 50 on 1-D data spanning 100 lost 0.6 on the expanded (fused) form."""
    torch.manual_seed(0)
    keys = torch.linspace(0, 100, 200)
    model = NadarayaWatson(NWConfig(in_features=1, n_keys=200, learn_bandwidth=False, bandwidth=bandwidth))
    model.set_memory(keys, torch.sin(keys / 7) * 10)
    queries = torch.rand(500) * 120 - 10
    reference = model.double()(queries.double())[0]  # direct form in float64
    model.float()
    assert (model(queries)[0].double() - reference).abs().max() < 1e-4
    assert model.fused_is_exact(queries[:, None]) == (bandwidth < 0.5)
    narrow = NadarayaWatson(NWConfig(in_features=1, n_keys=200, learn_bandwidth=False, bandwidth=bandwidth))
    narrow.set_memory(keys / 100, keys)  # the same data on [0, 1] keeps the fused path up to w = 3
    assert narrow.fused_is_exact(queries[:, None] / 100) == (bandwidth <= 3)


def metric_nw(rank: int, dims: int = 6, n_keys: int = 300, seed: int = 0) -> NadarayaWatson:
    """A metric-learned NW with a random, non-orthogonal map L (rank, dims), as after training."""
    torch.manual_seed(seed)
    model = NadarayaWatson(NWConfig(in_features=dims, n_keys=n_keys, rank=rank, bandwidth=1.0))
    model.set_memory(torch.randn(n_keys, dims) + 1, torch.randn(n_keys))
    with torch.no_grad():
        model.L.copy_(torch.randn(rank, dims) * 0.7)
    return model


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_metric_learned_nw_on_the_fused_path_equals_the_direct_kernel_in_float64(rank):
    model = metric_nw(rank)
    queries = torch.randn(200, 6) + 1
    assert model.fused_is_exact(model.x_scaler(queries))
    fused, _ = model(queries)
    reference = model.double()
    q = reference.x_scaler(queries.double())
    distance = ((q[:, None, :] - reference.keys[None]) @ reference.L.T).pow(2).sum(-1)  # |L(x - k)|^2, (Q, K)
    expected = torch.softmax(-distance / 2, -1) @ reference.values
    assert torch.allclose(fused.double(), reference.y_scaler.inverse(expected[:, None])[:, 0], atol=1e-4)
    direct, weights = model(queries.double(), need_weights=True)
    assert torch.allclose(direct, reference.y_scaler.inverse(expected[:, None])[:, 0], atol=1e-10)
    assert torch.allclose(weights.sum(-1), torch.ones(200, dtype=torch.float64))


def test_metric_learning_starts_from_the_plain_kernel_and_leaves_one_out():
    torch.manual_seed(0)
    keys, values = torch.randn(40, 4), torch.randn(40)
    plain = NadarayaWatson(NWConfig(in_features=4, n_keys=40, bandwidth=0.7))
    full = NadarayaWatson(NWConfig(in_features=4, n_keys=40, bandwidth=0.7, rank=4))
    for model in (plain, full):
        model.set_memory(keys, values)
    queries = torch.randn(25, 4)
    assert torch.allclose(full(queries)[0], plain(queries)[0], atol=1e-5)  # L = w x an orthogonal turn
    assert torch.allclose(full.L.norm(dim=-1), torch.full((4,), 0.7))
    low = NadarayaWatson(NWConfig(in_features=4, n_keys=40, bandwidth=0.7, rank=2))
    low.set_memory(keys, values)
    index = torch.arange(40)
    _, weights = low(keys, exclude=index, need_weights=True)
    assert torch.equal(weights.diagonal(), torch.zeros(40))
    fused, _ = low(keys, exclude=index)
    assert torch.allclose(fused, low.y_scaler.inverse((weights @ low.values)[:, None])[:, 0], atol=1e-5)


def test_a_rank_outside_the_features_or_with_per_feature_bandwidths_is_refused():
    with pytest.raises(ValueError, match="rank must be between 0 and in_features"):
        NWConfig(in_features=3, rank=4)
    with pytest.raises(ValueError, match="not both"):
        NWConfig(in_features=3, rank=2, per_feature=True)


def trend_nw(learned: bool = True, dims: int = 4, n_keys: int = 120, rank: int = 0) -> NadarayaWatson:
    torch.manual_seed(0)
    config = NWConfig(in_features=dims, n_keys=n_keys, bandwidth=0.8, learn_bandwidth=learned, rank=rank, trend=True)
    model = NadarayaWatson(config)
    keys = torch.randn(n_keys, dims)
    model.set_memory(keys, keys @ torch.linspace(1, -2, dims) + torch.sin(3 * keys[:, 0]))
    return model


@pytest.mark.parametrize("rank", [0, 2])
def test_a_trend_pools_keys_with_values_and_the_fused_path_equals_the_direct_formula(rank):
    model = trend_nw(rank=rank).double()
    with torch.no_grad():
        model.slope.add_(torch.randn(4, dtype=torch.float64) * 0.3)  # as after training: not the initial fit
    queries = torch.randn(50, 4, dtype=torch.float64) * 2
    q = model.x_scaler(queries)
    weights = torch.softmax(model.scores(q), -1)  # (Q, K)
    standardized = weights @ model.values + (q - weights @ model.keys) @ model.slope  # sum a y + b.(x - sum a x)
    expected = model.y_scaler.inverse(standardized[:, None])[:, 0]
    assert model.fused_is_exact(q)
    fused, _ = model(queries)
    direct, direct_weights = model(queries, need_weights=True)
    assert torch.allclose(fused, expected, atol=1e-9) and torch.allclose(direct, expected, atol=1e-9)
    assert torch.allclose(direct_weights, weights)
    index = torch.arange(model.config.n_keys)
    kept, left_out = model(model.x_scaler.inverse(model.keys), exclude=index, need_weights=True)
    assert torch.equal(left_out.diagonal(), torch.zeros_like(left_out.diagonal()))
    plain = model(model.x_scaler.inverse(model.keys))[0]
    assert not torch.allclose(kept, plain)  # leaving one out changes the pooled values and keys alike


def test_a_trend_follows_a_linear_target_past_the_keys_where_plain_nw_flattens():
    torch.manual_seed(0)
    keys = torch.randn(200, 3)  # standardized, as the model stores them
    target = lambda x: x @ torch.tensor([4.0, -3.0, 2.0]) + 1  # noqa: E731
    models = {}
    for trend in (False, True):
        models[trend] = NadarayaWatson(NWConfig(in_features=3, n_keys=200, bandwidth=1.0, trend=trend))
        models[trend].set_memory(keys, target(keys))
    outside = torch.rand(30, 3) + 4  # beyond (almost) every key
    with torch.no_grad():
        assert torch.allclose(models[True](outside)[0], target(outside), rtol=1e-2)  # the least-squares slope
        assert (models[False](outside)[0] - target(outside)).abs().min() > 2  # a local average stays inside


def test_a_trend_is_learned_with_the_kernel_or_fixed_with_it_and_only_for_regression():
    assert "slope" in dict(trend_nw(learned=True).named_parameters())
    fixed = trend_nw(learned=False)
    assert "slope" not in dict(fixed.named_parameters()) and "slope" in dict(fixed.named_buffers())
    with pytest.raises(ValueError, match="linear trend is for regression"):
        NWConfig(in_features=3, n_classes=3, trend=True)


@pytest.mark.parametrize("rank,prototypes,trend", [(0, False, False), (2, False, True), (0, True, False)])
def test_the_kept_key_side_follows_every_change_of_the_model_and_answers_as_a_fresh_model(rank, prototypes, trend):
    """Serving computes the keys' side of attention once (no gradient flows); an in-place change of the keys, the
    kernel or the scaler, or a new tensor in their place, is computed afresh: as a model built from the same state."""
    torch.manual_seed(0)
    config = NWConfig(in_features=3, n_keys=40, rank=rank, prototypes=prototypes, trend=trend, bandwidth=1.5)
    model = NadarayaWatson(config).eval()
    rows = torch.randn(200 if prototypes else 40, 3)
    model.x_scaler.fit(rows)
    model.set_memory(rows, rows.sum(-1))
    model.double()  # as served
    queries = torch.randn(16, 3, dtype=torch.float64)

    def fresh() -> NadarayaWatson:
        twin = NadarayaWatson(config).double().eval()
        twin.load_state_dict(model.state_dict())
        return twin

    changes = [
        lambda: model.keys.add_(0.3),
        lambda: (model.L if rank else model.w).mul_(1.7),
        lambda: model.x_scaler.std.mul_(2.0),
        lambda: model.values.neg_(),
        lambda: new_keys(model, model.keys.detach() * 0.5),
    ]
    with torch.no_grad():
        for change in [lambda: None, *changes]:
            change()
            twin = fresh()
            for path in (model, twin):
                assert path.key_side() is path.key_side()  # kept between passes while nothing changes
            assert torch.allclose(model(queries)[0], twin(queries)[0], rtol=1e-9, atol=1e-9)
            assert torch.allclose(model.nearest_key_distance(queries), twin.nearest_key_distance(queries), rtol=1e-9)


def new_keys(model: NadarayaWatson, keys: torch.Tensor) -> None:
    """Another tensor in the keys' place (a parameter where they are learned)."""
    if isinstance(model.keys, torch.nn.Parameter):
        model.keys = torch.nn.Parameter(keys)
    else:
        model.register_buffer("keys", keys)


def test_while_training_the_key_side_carries_the_gradient_to_the_kernel():
    model = random_nw(30, 2, False)
    loss = model(torch.randn(8, 2))[0].square().sum()
    loss.backward()
    assert model.w.grad is not None and model.w.grad.abs().sum() > 0
    assert model.kept_key_side is None  # nothing kept while a gradient flows


@pytest.mark.parametrize("kernel", ["gaussian", "laplacian"])
def test_nearest_key_distances_of_a_small_batch_and_a_large_one_agree(kernel):
    """Exact differences for a small batch, cdist (its matrix product) for a large one: the same distances."""
    torch.manual_seed(3)
    model = NadarayaWatson(NWConfig(in_features=4, n_keys=500, kernel=kernel, bandwidth=0.8)).double().eval()
    model.set_memory(torch.randn(500, 4, dtype=torch.float64), torch.randn(500, dtype=torch.float64))
    queries = torch.randn(64, 4, dtype=torch.float64) * 2
    one_by_one = torch.cat([model.nearest_key_distance(q[None]) for q in queries])  # 2,000 differences each
    together = model.nearest_key_distance(queries)  # 128,000: past DIRECT_DISTANCE_ELEMENTS
    assert torch.allclose(one_by_one, together, rtol=1e-6, atol=1e-9)
