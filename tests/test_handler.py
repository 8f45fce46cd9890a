"""The handler in-process with a mock TorchServe context (no server)."""

import json

import pytest
import torch

from handlers import attention_handler
from handlers.attention_handler import AttentionHandler
from handlers.contract import Limits, RequestError, adapter_for, answer_batch, parse_request
from handlers.errors import WarmUpError
from handlers.types import Answer
from training.data import dates
from training.nn import NWConfig, Seq2SeqConfig, SequenceConfig, build_model, save_checkpoint, translate
from training.nn.seq2seq import EOS


class MockContext:
    """What TorchServe hands a handler: properties, manifest, per-request headers and response slots."""

    def __init__(self, model_dir, explain=(), limits=None, request_headers=None):
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None}
        self.manifest = {"model": {"serializedFile": "checkpoint.pt"}}
        self.model_yaml_config = {"handler": limits or {}}
        self.explain = set(explain)
        self.request_headers = request_headers or {}  # {idx: {name: value}}, names as the client wrote them
        self.status, self.headers = {}, {}

    def get_request_header(self, idx, key):
        return "True" if key == "explain" and idx in self.explain else self.request_headers.get(idx, {}).get(key)

    def get_all_request_header(self, idx):
        return {"body": {"content-type": "application/json"}, **self.request_headers.get(idx, {})}

    def set_response_status(self, code=200, phrase="", idx=0):
        self.status[idx] = code

    def set_response_content_type(self, idx, value):
        self.headers.setdefault(idx, {})["content-type"] = value

    def set_response_header(self, idx, key, value):
        self.headers.setdefault(idx, {})[key] = value


@torch.no_grad()
def make_model_dir(path, kind):
    torch.manual_seed(0)
    if kind == "nw":
        model = build_model("nw", NWConfig(in_features=1, n_keys=20, bandwidth=2.0))
        model.set_memory(torch.linspace(0, 5, 20), torch.sin(torch.linspace(0, 5, 20)))
    elif kind == "s2s":
        config = Seq2SeqConfig(source_vocab=dates.SOURCE_CHARS, target_vocab=dates.TARGET_CHARS, max_source_len=48)
        model = build_model("s2s", config)
        model.decoder.out.bias[EOS] = -1e3  # untrained, it would often stop at once: let it write every step
    else:
        model = build_model(
            "mha",
            SequenceConfig(in_features=2, out_features=3, task="classification", d_model=8, n_heads=2, n_layers=1),
        )
    sha = save_checkpoint(model.eval(), path / "checkpoint.pt")
    (path / "model_info.json").write_text(
        json.dumps({"name": f"{kind}-toy", "version": "7", "run_id": "r1", "kind": kind, "sha256": sha})
    )
    return model.eval()


@pytest.fixture
def nw(tmp_path):
    model = make_model_dir(tmp_path, "nw")
    handler = AttentionHandler()
    handler.initialize(MockContext(tmp_path, limits={"max_instances": 4}))
    return handler, model, tmp_path


@pytest.fixture
def mha(tmp_path):
    model = make_model_dir(tmp_path, "mha")
    handler = AttentionHandler()
    handler.initialize(MockContext(tmp_path))
    return handler, model, tmp_path


def call(handler, model_dir, bodies, explain=()):
    """Bodies as TorchServe hands them over with request decoding off: raw bytes."""
    context = MockContext(model_dir, explain)
    raw = [b if isinstance(b, bytes) else json.dumps(b).encode() for b in bodies]
    out = handler.handle([{"body": b} for b in raw], context)
    return [json.loads(o) for o in out], context


def test_nw_predictions_equal_the_model_and_carry_model_info(nw):
    handler, model, path = nw
    (answer,), context = call(handler, path, [{"instances": [0.5, [2.0], 4]}])
    expected = model(torch.tensor([[0.5], [2.0], [4.0]]))[0]
    assert context.status[0] == 200 and context.headers[0]["content-type"] == "application/json"
    assert answer["predictions"] == pytest.approx(expected.tolist(), abs=1e-6)
    assert answer["model"] == {"name": "nw-toy", "version": "7", "run_id": "r1"}


def test_nw_explanations_are_weights_over_training_keys_summing_to_one(nw):
    handler, _, path = nw
    (answer,), _ = call(handler, path, [{"instances": [2.5]}], explain={0})
    explanation = answer["explanations"][0]
    assert len(explanation["weights"]) == 20 and sum(explanation["weights"]) == pytest.approx(1.0, abs=1e-5)
    assert explanation["top_keys"][0]["weight"] == max(explanation["weights"])


def test_nw_with_a_trend_explains_the_prediction_as_pooled_values_plus_the_trend(tmp_path):
    torch.manual_seed(0)
    model = build_model("nw", NWConfig(in_features=2, n_keys=30, bandwidth=1.5, trend=True))
    keys = torch.randn(30, 2)
    model.set_memory(keys, 3 * keys[:, 0] - keys[:, 1] + 0.1 * torch.randn(30))
    sha = save_checkpoint(model.eval(), tmp_path / "checkpoint.pt")
    info = {"name": "nw-trend", "version": "1", "run_id": "r1", "kind": "nw", "sha256": sha}
    (tmp_path / "model_info.json").write_text(json.dumps(info))
    handler = AttentionHandler()
    handler.initialize(MockContext(tmp_path))
    queries = [[0.5, -1.0], [2.5, 2.0]]
    (predicted, explained), _ = call(handler, tmp_path, [{"instances": queries}] * 2, explain={1})
    expected = model(torch.tensor(queries))[0]
    assert predicted["predictions"] == pytest.approx(expected.tolist(), abs=1e-5)
    for query, explanation in zip(queries, explained["explanations"]):
        weights = torch.tensor(explanation["weights"], dtype=torch.float64)  # (K,)
        pooled_value = float(weights @ model.values.double())
        pooled_key = weights @ model.keys.double()  # (2,), the scalers are the identity here
        along = float((torch.tensor(query, dtype=torch.float64) - pooled_key) @ model.slope.detach().double())
        assert explanation["trend"] == pytest.approx(along, abs=1e-4)
        assert explanation["prediction"] == pytest.approx(pooled_value + explanation["trend"], abs=1e-5)


def test_mha_variable_length_classification_and_heads_on_request(mha):
    handler, model, path = mha
    seqs = [[[0.1, 1.0], [0.2, 0.0]], [[0.5, 0.5]] * 5]
    (answer,), _ = call(handler, path, [{"instances": seqs}])
    for seq, prediction in zip(seqs, answer["predictions"]):
        logits = model(torch.tensor([seq]), torch.tensor([len(seq)]))[0][0]
        assert prediction["label"] == int(logits.argmax())
        assert prediction["probabilities"] == pytest.approx(torch.softmax(logits, -1).tolist(), abs=1e-5)
    (plain, with_heads), _ = call(
        handler, path, [{"instances": seqs}, {"instances": seqs, "heads": True}], explain={0, 1}
    )
    assert "head_weights" not in plain["explanations"][0]
    first = with_heads["explanations"][0]
    assert len(first["pooling_weights"]) == 2 and sum(first["pooling_weights"]) == pytest.approx(1.0, abs=1e-5)
    assert torch.tensor(first["head_weights"]).shape == (1, 2, 2, 2)  # (L, H, T, T) over valid steps


BAD_NW = [
    (b"{not json", 400, "invalid JSON"),
    (b"\xff\xfe", 400, "invalid body"),
    ([1, 2], 400, "invalid body"),
    ({"instance": [1]}, 400, "missing instances"),  # ({"inputs": ...} is an OIP body: tests/test_oip.py)
    ({"instances": []}, 400, "empty instances"),
    ({"instances": [1, 2, 3, 4, 5]}, 413, "too many instances"),
    ({"instances": [[1, 2]]}, 400, "wrong feature count"),
    ({"instances": ["1"]}, 400, "invalid instance"),
    ({"instances": [True]}, 400, "invalid instance"),
    ({"instances": [float("inf")]}, 400, "non-finite number"),
    ({"instances": [1], "heads": "yes"}, 400, "invalid heads"),
    ({"instances": [1], "heads": True}, 400, "invalid heads"),  # NW has no heads to explain
]


@pytest.mark.parametrize("body,status,error", BAD_NW)
def test_each_bad_input_fails_alone_with_a_named_error(nw, body, status, error):
    handler, _, path = nw
    answers, context = call(handler, path, [{"instances": [1.0]}, body, {"instances": [2.0, 3.0]}])
    assert context.status == {0: 200, 1: status, 2: 200}
    assert answers[1]["error"] == error and answers[1]["detail"]
    assert len(answers[0]["predictions"]) == 1 and len(answers[2]["predictions"]) == 2


def test_sequence_limits_and_shapes_are_checked(mha):
    handler, _, path = mha
    bad = [
        {"instances": [[]]},  # empty sequence
        {"instances": [[[0.1, 0.2, 0.3]]]},  # three features, model takes two
        {"instances": [[0.1, 0.2]]},  # steps are single numbers, the model takes two features
        {"instances": [[[0.0, 0.0]] * 1001]},  # over max_steps
    ]
    answers, context = call(handler, path, bad + [{"instances": [[[0.0, 1.0]]]}])
    assert [a["error"] for a in answers[:4]] == [
        "empty sequence",
        "wrong feature count",
        "wrong feature count",
        "sequence too long",
    ]
    assert "instances[0][0] has 1 features" in answers[2]["detail"]
    assert context.status[3] == 413 and context.status[4] == 200


def test_a_mixed_batch_runs_one_forward_pass(nw, monkeypatch):
    handler, model, path = nw
    sizes = []
    real = handler.adapter.model.forward

    def counting(x, **kwargs):
        sizes.append(len(x))
        return real(x, **kwargs)

    monkeypatch.setattr(handler.adapter.model, "forward", counting)
    answers, context = call(handler, path, [{"instances": [1.0, 2.0]}, {"instances": []}, {"instances": [3.0]}])
    assert sizes == [3] and context.headers[0]["X-Batch-Size"] == "3"
    assert answers[2]["predictions"][0] == pytest.approx(model(torch.tensor([[3.0]]))[0].item(), abs=1e-6)


def test_an_internal_failure_answers_500_and_keeps_the_handler_alive(nw, monkeypatch):
    handler, _, path = nw
    monkeypatch.setattr(handler.adapter, "run", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    answers, context = call(handler, path, [{"instances": [1.0]}])
    assert context.status[0] == 500 and "boom" in answers[0]["detail"]
    monkeypatch.undo()
    answers, context = call(handler, path, [{"instances": [1.0]}])
    assert context.status[0] == 200


def test_a_model_that_fails_its_own_example_is_refused_at_start(tmp_path, monkeypatch):
    make_model_dir(tmp_path, "nw")
    refused = [Answer(500, '{"error": "internal"}', {})]
    monkeypatch.setattr(attention_handler, "answer_batch", lambda *args: refused)
    with pytest.raises(WarmUpError) as error:
        AttentionHandler().initialize(MockContext(tmp_path))
    assert "internal" in str(error.value)


def test_contract_functions_work_without_torchserve():
    model = build_model("nw", NWConfig(in_features=2, n_keys=4, bandwidth=1.0))
    adapter = adapter_for(model, Limits())
    with pytest.raises(RequestError) as error:
        parse_request({"instances": [[1.0]]}, adapter, Limits())
    assert error.value.status == 400 and "takes 2" in error.value.detail
    answers = answer_batch([b'{"instances": [[1.0, 2.0]]}'], [False], adapter, Limits(), {"name": "x"})
    assert answers[0].status == 200 and len(json.loads(answers[0].body)["predictions"]) == 1


def test_worker_settings_come_from_the_model_config(tmp_path):
    make_model_dir(tmp_path, "nw")
    before = torch.get_num_threads()
    try:
        handler = AttentionHandler()
        handler.initialize(MockContext(tmp_path, limits={"max_steps": 7, "torch_threads": 1}))
        assert handler.limits.max_steps == 7 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_handler_module_defines_exactly_one_class():
    """TorchServe refuses a handler module with more than one class of its own."""
    import inspect

    import handlers.attention_handler as module

    own = [c for _, c in inspect.getmembers(module, inspect.isclass) if c.__module__ == module.__name__]
    assert own == [AttentionHandler]


# s2s: texts in, decoded strings and alignments out

S2S_TEXTS = ["23 Nov 2026", "11/23/26", "Monday, November 23, 2026"]


@pytest.fixture
def s2s(tmp_path):
    model = make_model_dir(tmp_path, "s2s")
    handler = AttentionHandler()
    handler.initialize(MockContext(tmp_path))
    return handler, model, tmp_path


def test_s2s_predictions_are_the_decoded_strings_and_explanations_agree_with_them(s2s):
    handler, model, path = s2s
    (answer,), context = call(handler, path, [{"instances": S2S_TEXTS}])
    expected = [t.text for t in translate(model, S2S_TEXTS)]
    assert context.status[0] == 200 and answer["predictions"] == expected
    assert all(len(text) == model.config.max_target_len for text in expected)  # it wrote every step
    (explained,), _ = call(handler, path, [{"instances": S2S_TEXTS}], explain={0})
    for text, prediction, item in zip(S2S_TEXTS, expected, explained["explanations"]):
        assert item["prediction"] == prediction == "".join(item["output_tokens"])
        assert item["input_tokens"] == list(text)
        weights = torch.tensor(item["weights"])  # (output tokens, input tokens)
        assert weights.shape == (len(prediction), len(text))
        assert torch.allclose(weights.sum(-1), torch.ones(len(prediction)), atol=1e-5)


BAD_S2S = [
    ({"instances": [123]}, 400, "invalid instance", "instances[0] must be a string, got 123"),
    ({"instances": [["23 Nov 2026"]]}, 400, "invalid instance", "must be a string"),
    ({"instances": [""]}, 400, "empty text", "instances[0] is empty"),
    ({"instances": ["ok 1", "   "]}, 400, "empty text", "instances[1] is empty"),
    ({"instances": ["23 Nov 2026 \u00e9"]}, 400, "unknown character", "instances[0] has 'é' at position 12"),
    ({"instances": ["23\tNov"]}, 400, "unknown character", "'\\t' at position 2"),
    ({"instances": ["1" * 49]}, 413, "text too long", "49 characters; at most 48"),
]


@pytest.mark.parametrize("body,status,error,detail", BAD_S2S)
def test_s2s_bad_inputs_fail_alone_with_a_named_error(s2s, body, status, error, detail):
    handler, _, path = s2s
    answers, context = call(handler, path, [{"instances": ["1.2.26"]}, body])
    assert context.status == {0: 200, 1: status}
    assert answers[1]["error"] == error and detail in answers[1]["detail"]
    assert len(answers[0]["predictions"]) == 1


def test_s2s_requests_are_priced_under_the_same_budget(tmp_path):
    model = make_model_dir(tmp_path, "s2s")
    adapter = adapter_for(model, Limits())
    short, long = adapter.cost(["1.2.26"], False, False), adapter.cost(["x" * 48], False, False)
    assert 0 < short.mmac < long.mmac and adapter.cost(["1.2.26"], True, False).response_bytes > short.response_bytes
    limits = Limits(max_request_mmac=3 * short.mmac)
    answers = answer_batch(
        [json.dumps({"instances": ["1.2.26"] * 4}).encode(), json.dumps({"instances": ["1.2.26"]}).encode()],
        [False, False],
        adapter_for(model, limits),
        limits,
        {"name": "s2s-toy"},
    )
    assert answers[0].status == 413 and json.loads(answers[0].body)["error"] == "request too costly"
    assert "texts of 48 characters" in json.loads(answers[0].body)["detail"] and answers[1].status == 200


@torch.no_grad()
def test_a_metric_learned_nw_is_served_as_in_process_and_explained_consistently(tmp_path):
    torch.manual_seed(0)
    model = build_model("nw", NWConfig(in_features=3, n_keys=30, rank=2, bandwidth=1.0))
    x = torch.randn(30, 3) * 4 + 10
    model.x_scaler.fit(x)
    model.y_scaler.fit(x.sum(-1))
    model.set_memory(x, x.sum(-1))
    model.L.copy_(torch.randn(2, 3))  # as after training: not the initial turn of the plain kernel
    sha = save_checkpoint(model.eval(), tmp_path / "checkpoint.pt")
    info = {"name": "nw-toy", "version": "1", "run_id": "r1", "kind": "nw", "sha256": sha}
    (tmp_path / "model_info.json").write_text(json.dumps(info))
    handler = AttentionHandler()
    handler.initialize(MockContext(tmp_path))
    instances = [[10.0, 9.0, 12.0], [4.0, 15.0, 10.5]]
    (answer,), _ = call(handler, tmp_path, [{"instances": instances}])
    expected = model.double()(torch.tensor(instances, dtype=torch.float64))[0]
    assert answer["predictions"] == pytest.approx(expected.tolist(), abs=1e-6)
    (explained,), _ = call(handler, tmp_path, [{"instances": instances}], explain={0})
    for prediction, explanation in zip(answer["predictions"], explained["explanations"]):
        weights = torch.tensor(explanation["weights"], dtype=torch.float64)
        pooled = weights @ x.sum(-1).double()  # the prediction is the attention-weighted mean of the key targets
        assert explanation["prediction"] == pytest.approx(prediction, abs=1e-6)
        assert pooled.item() == pytest.approx(prediction, abs=1e-3)
