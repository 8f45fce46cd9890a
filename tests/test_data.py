import pytest
import torch

from training.data.datasets import LOADERS, load_dataset

SMALL = {
    "adding": dict(n_train=200, n_val=50, n_test=50, max_len=40),
    "dates": dict(n_train=500, n_val=100, n_test=100),
}


@pytest.fixture(params=sorted(LOADERS))
def name(request):
    return request.param


def load(name, seed=0):
    return load_dataset(name, seed=seed, **SMALL.get(name, {}))


def test_shapes_and_lengths(name):
    data = load(name)
    for split in (data.train, data.val, data.test):
        assert split.x.shape[0] == split.y.shape[0] > 0
        assert torch.isfinite(split.x).all()
        if data.kind == "sequence":
            assert split.x.dim() == 3 and split.lengths.shape == split.y.shape
            assert (split.lengths >= 1).all() and (split.lengths <= split.x.shape[1]).all()
        elif data.kind == "text":  # character ids (N, T), target ids (N, T_out)
            assert split.x.dim() == 2 and split.y.dim() == 2 and split.lengths.shape == (len(split),)
            assert (split.lengths >= 1).all() and (split.lengths <= split.x.shape[1]).all()
        else:
            assert split.x.dim() == 2 and split.lengths is None


def test_deterministic_under_a_seed_and_different_across_seeds(name):
    a, b, c = load(name, 0), load(name, 0), load(name, 1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


def test_no_test_rows_in_train(name):
    data = load(name)
    flat = lambda split: {tuple(row.flatten().tolist()) for row in split.x}  # noqa: E731
    assert not flat(data.test) & flat(data.train)
    assert not flat(data.val) & flat(data.train)


def test_sine_matches_the_reference_experiment():
    data = load_dataset("sine")
    assert len(data.train) == 50 and len(data.test) == 50
    assert torch.all(data.train.x[1:] >= data.train.x[:-1])  # sorted
    assert torch.allclose(data.test.x.squeeze(), torch.arange(0, 5, 0.1))
    assert torch.allclose(data.test.y, 2 * torch.sin(data.test.x.squeeze()) + data.test.x.squeeze() ** 0.8)


def test_adding_targets_are_the_sum_of_the_two_marked_values():
    data = load("adding")
    x, y, lengths = data.train.x, data.train.y, data.train.lengths
    assert torch.equal(x[..., 1].sum(1), torch.full_like(y, 2.0))
    assert torch.allclose((x[..., 0] * x[..., 1]).sum(1), y)
    for row, n in zip(x, lengths):
        assert (row[n:] == 0).all() and (row[:n, 1].sum() == 2)


def test_digits_are_sequences_of_eight_rows_with_ten_classes():
    data = load_dataset("digits")
    assert data.train.x.shape[1:] == (8, 8) and data.n_classes == 10
    assert set(data.train.y.tolist()) == set(range(10))


def test_unknown_data_set_is_named_in_the_error():
    with pytest.raises(ValueError, match="mnist"):
        load_dataset("mnist")
