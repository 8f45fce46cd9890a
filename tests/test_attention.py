import pytest
import torch

from training.nn.attention import (
    AdditiveAttention,
    AttentionPooling,
    DotProductAttention,
    MultiHeadAttention,
    masked_softmax,
    weighted_sum,
)


def test_masked_softmax_rows_sum_to_one_and_masked_keys_get_zero():
    scores = torch.randn(2, 3, 5)
    weights = masked_softmax(scores, torch.tensor([2, 4]))
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3))
    assert (weights[0, :, 2:] == 0).all() and (weights[1, :, 4:] == 0).all()
    assert (weights[0, :, :2] > 0).all()


def test_masked_softmax_per_query_valid_lengths():
    lens = torch.tensor([[1, 3], [2, 5]])
    weights = masked_softmax(torch.randn(2, 2, 5), lens)
    for b in range(2):
        for q in range(2):
            assert (weights[b, q, lens[b, q] :] == 0).all()
            assert weights[b, q, : lens[b, q]].sum().item() == pytest.approx(1.0, abs=1e-6)


def test_masked_softmax_does_not_modify_its_input_and_zero_length_rows_are_zero():
    scores = torch.randn(1, 2, 4)
    before = scores.clone()
    weights = masked_softmax(scores, torch.tensor([0]))
    assert torch.equal(scores, before)
    assert (weights == 0).all()


def test_additive_and_dot_product_shapes_with_different_query_and_key_sizes():
    queries, keys, values = torch.randn(2, 1, 20), torch.randn(2, 10, 2), torch.randn(2, 10, 4)
    additive = AdditiveAttention(query_size=20, key_size=2, hidden_size=8)
    out, weights = additive(queries, keys, values, torch.tensor([2, 6]), need_weights=True)
    assert out.shape == (2, 1, 4) and weights.shape == (2, 1, 10)
    assert (weights[0, 0, 2:] == 0).all()
    dot = DotProductAttention()
    out, weights = dot(torch.randn(2, 1, 2), keys, values, torch.tensor([2, 6]), need_weights=True)
    assert out.shape == (2, 1, 4) and weights.shape == (2, 1, 10)


def test_dot_product_fused_path_equals_explicit_weights_path():
    q, k, v = torch.randn(3, 4, 8), torch.randn(3, 6, 8), torch.randn(3, 6, 5)
    lens = torch.tensor([1, 4, 6])
    fused, none = DotProductAttention()(q, k, v, lens)
    explicit, weights = DotProductAttention()(q, k, v, lens, need_weights=True)
    assert none is None and weights is not None
    assert torch.allclose(fused, explicit, atol=1e-6)


@pytest.mark.parametrize("self_attention", [True, False])
def test_multi_head_attention_equals_torch_given_the_same_weights(self_attention):
    torch.manual_seed(0)
    ours = MultiHeadAttention(d_model=16, n_heads=4).eval()
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    reference.in_proj_weight.data.copy_(ours.in_proj.weight)
    reference.in_proj_bias.data.copy_(ours.in_proj.bias)
    reference.out_proj.load_state_dict(ours.out_proj.state_dict())
    x = torch.randn(3, 7, 16)
    q, kv = (x, x) if self_attention else (torch.randn(3, 5, 16), x)
    lens = torch.tensor([7, 3, 1])
    padding = torch.arange(7)[None, :] >= lens[:, None]  # True = ignore
    ours_out, ours_w = ours(q, kv, kv, lens, need_weights=True)
    ref_out, ref_w = reference(q, kv, kv, key_padding_mask=padding, average_attn_weights=False)
    assert torch.allclose(ours_out, ref_out, atol=1e-5)
    assert torch.allclose(ours_w, ref_w, atol=1e-5)
    fused_out, _ = ours(q, kv, kv, lens)
    assert torch.allclose(fused_out, ref_out, atol=1e-5)


def test_weighted_sum_reproduces_the_seeds_soft_attention_example():
    values = torch.arange(12.0).reshape(1, 4, 3).repeat(2, 1, 1)
    weights = torch.tensor([[0, 0, 0, 1.0], [0, 0, 0.5, 0.5]])
    pooled = weighted_sum(values, weights)
    assert torch.equal(pooled[0], values[0, 3])
    assert torch.equal(pooled[1], values[1, 2:].mean(0))


def test_attention_pooling_is_average_pooling_when_scores_are_equal_and_respects_lengths():
    pool = AttentionPooling(d_model=3)
    torch.nn.init.zeros_(pool.scorer[2].weight)  # all scores equal -> uniform weights
    values = torch.randn(2, 4, 3)
    out, weights = pool(values, torch.tensor([4, 2]), need_weights=True)
    assert torch.allclose(out[0], values[0].mean(0), atol=1e-6)
    assert torch.allclose(out[1], values[1, :2].mean(0), atol=1e-6)
    assert torch.equal(weights[1, 2:], torch.zeros(2))
    assert pool(values)[1] is None


def test_weights_are_never_stored_on_modules():
    mha = MultiHeadAttention(d_model=8, n_heads=2)
    x = torch.randn(1, 3, 8)
    before = set(vars(mha))
    mha(x, x, x, need_weights=True)
    assert set(vars(mha)) == before
