"""The Open Inference Protocol codec for every model kind: the same numbers as the contract's `/predictions`,
attention only when named, and bad requests refused with a 4xx naming the tensor."""

import json
import math
import random

import pytest
from test_agreement import INFO, KINDS
from test_handler import MockContext, make_model_dir

from handlers.attention_handler import AttentionHandler
from handlers.contract import Limits, adapter_for, agrees, answer_batch, unrendered
from handlers.oip import answer_any, metadata, oip_answer, stacked
from handlers.oip_kinds import oip_kind
from handlers.oip_tensors import parse_oip

FRAME = {"model_name": INFO["name"], "model_version": INFO["version"], "id": ""}  # a refusal's, no id given


def served(kind, **limits):
    random.seed(1)
    model, instances = KINDS[kind]()
    adapter = adapter_for(model, Limits(**limits))
    return adapter, oip_kind(adapter), instances[:5]


def oip_body(kind, instances):
    """The instances as the kind's OIP input tensor (flat data, row-major), sequences padded with `lengths`."""
    if kind.startswith("nw"):
        return {"inputs": [tensor("features", "FP64", [len(instances), 2], instances)]}
    if kind.startswith("mha"):
        steps = max(len(s) for s in instances)
        padded = [s + [[0.0, 0.0]] * (steps - len(s)) for s in instances]
        lengths = tensor("lengths", "INT64", [len(instances)], [len(s) for s in instances])
        return {"inputs": [tensor("sequences", "FP32", [len(instances), steps, 2], padded), lengths]}
    if kind == "s2s":
        return {"inputs": [tensor("texts", "BYTES", [len(instances)], instances)]}
    return {"inputs": [tensor("images", "INT64", [len(instances), 8, 8], instances)]}


def tensor(name, datatype, shape, nested):
    def flat(x):
        return [v for item in x for v in flat(item)] if isinstance(x, list) else [x]

    return {"name": name, "datatype": datatype, "shape": shape, "data": flat(nested)}


def ask(adapter, kind, bodies, limits=None):
    raw = [json.dumps(body).encode() for body in bodies]
    answers, _ = answer_any(raw, [False] * len(raw), adapter, kind, limits or adapter.limits, INFO)
    return [(answer.status, json.loads(answer.body)) for answer in answers]


def outputs(body):
    return {o["name"]: o for o in body["outputs"]}


@pytest.mark.parametrize("kind", list(KINDS))
def test_oip_answers_the_same_numbers_as_predictions(kind):
    adapter, oip, instances = served(kind)
    (reference,) = answer_batch([json.dumps({"instances": instances}).encode()], [False], adapter, Limits(), INFO)
    predictions = json.loads(reference.body)["predictions"]
    body = oip_body(kind, instances) | {"id": "r-1"}
    ((status, answer),) = ask(adapter, oip, [body])
    assert status == 200, answer
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("toy", "1", "r-1")
    got = outputs(answer)
    if isinstance(predictions[0], dict):
        assert got["label"]["data"] == [p["label"] for p in predictions] and got["label"]["shape"] == [5]
        probabilities = got["probabilities"]
        assert probabilities["shape"] == [5, len(predictions[0]["probabilities"])]
        assert agrees(probabilities["data"], [v for p in predictions for v in p["probabilities"]])
    else:
        prediction = got["prediction"]
        assert prediction["shape"] == [5] + ([len(predictions[0])] if isinstance(predictions[0], list) else [])
        assert agrees(prediction["data"], stacked(predictions)[0])
    assert set(got) == {o["name"] for o in metadata(oip, INFO)["outputs"]} - {
        "attention",
        "pooling_weights",
        "alignment",
        "pixel_attention",
    }


@pytest.mark.parametrize(
    ("kind", "name", "row_sum"),
    [
        ("nw-regression", "attention", 1),
        ("mha-regression", "pooling_weights", 1),
        ("s2s", "alignment", None),
        ("pixel", "pixel_attention", 1),
    ],
)
def test_attention_is_sent_only_when_named_and_is_what_explanations_reveal(kind, name, row_sum):
    adapter, oip, instances = served(kind)
    ((_, plain),) = ask(adapter, oip, [oip_body(kind, instances)])
    assert name not in outputs(plain)
    body = oip_body(kind, instances) | {"outputs": [{"name": name}, {"name": outputs(plain).popitem()[0]}]}
    ((status, answer),) = ask(adapter, oip, [body])
    assert status == 200 and len(answer["outputs"]) == 2
    weights = outputs(answer)[name]
    assert weights["shape"][0] == 5 and len(weights["data"]) == math.prod(weights["shape"])
    if row_sum:
        per_row = len(weights["data"]) // 5
        for i in range(5):
            assert sum(weights["data"][i * per_row : (i + 1) * per_row]) == pytest.approx(row_sum, abs=1e-5)


@pytest.mark.parametrize(("explain_keys", "datatype"), [("values", "FP64"), ("index", "INT64"), ("none", None)])
def test_nw_attention_reveals_no_more_than_the_archive_allows(explain_keys, datatype):
    adapter, oip, instances = served("nw-regression", explain_keys=explain_keys)
    declared = {o["name"]: o for o in metadata(oip, INFO)["outputs"]}
    status, answer = ask(adapter, oip, [oip_body("nw-regression", instances) | {"outputs": [{"name": "attention"}]}])[0]
    if datatype is None:
        assert "attention" not in declared and status == 400 and 'unknown output "attention"' in answer["error"]
        return
    assert status == 200 and declared["attention"]["datatype"] == outputs(answer)["attention"]["datatype"] == datatype
    if explain_keys == "index":  # the most attended keys' indices, as /explanations lists them
        (reference,) = answer_batch(
            [json.dumps({"instances": instances}).encode()], [True], adapter, adapter.limits, INFO
        )
        indices = [k["index"] for e in json.loads(reference.body)["explanations"] for k in e["top_keys"]]
        assert outputs(answer)["attention"]["data"] == indices


def test_metadata_declares_each_kinds_tensors():
    shapes = {}
    for kind in ("nw-regression", "mha-classification", "s2s", "pixel"):
        adapter, oip, _ = served(kind)
        shapes[kind] = {t["name"]: (t["datatype"], t["shape"]) for t in metadata(oip, INFO)["inputs"]}
    assert shapes == {
        "nw-regression": {"features": ("FP32", [-1, 2])},
        "mha-classification": {"sequences": ("FP32", [-1, -1, 2]), "lengths": ("INT64", [-1])},
        "s2s": {"texts": ("BYTES", [-1])},
        "pixel": {"images": ("FP32", [-1, 8, 8])},
    }


def features(datatype="FP32", shape=(1, 2), data=(1.0, 2.0), name="features"):
    return {"inputs": [{"name": name, "datatype": datatype, "shape": list(shape), "data": list(data)}]}


@pytest.mark.parametrize(
    ("body", "status", "named"),
    [
        (features(datatype="BYTES"), 400, "input 'features' has datatype \"BYTES\""),
        (features(shape=(2, 2)), 400, "input 'features' has shape [2, 2], 4 values, but 2 values of data"),
        (features(shape=(1, 3), data=(1, 2, 3)), 400, "input 'features' has shape [1, 3]; this model takes [-1, 2]"),
        (features(name="x"), 400, "unknown input 'x'; this model takes 'features'"),
        (features(data=(1.0, "a")), 400, "input 'features' data[1] is \"a\"; FP32 takes numbers"),
        (features(datatype="INT32", data=(1.0, 2.5)), 400, "data[0] is 1.0; INT32 takes integers"),
        (features() | {"outputs": [{"name": "weights"}]}, 400, 'unknown output "weights"'),
        (features(data=(1e308, 1.0)), 400, "features[0] feature 0 is 1e+308"),
        (features(shape=(5, 2), data=[1.0] * 10), 413, "too many instances: 5 instances; at most 4"),
        ({"inputs": []}, 400, '"inputs" must be a non-empty list'),
        (features() | {"outputs": [{"name": []}]}, 400, "unknown output outputs[0]"),  # found by the served fuzz
        (features(datatype=["FP32"]), 400, "input 'features' has datatype [\"FP32\"]"),
        (features(datatype={"a": 1}), 400, "input 'features' has datatype {\"a\": 1}"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_tensor_and_fail_alone(body, status, named):
    adapter, oip, instances = served("nw-regression", max_instances=4)
    answers = ask(adapter, oip, [body, oip_body("nw-regression", instances[:2]), {"instances": instances[:1]}])
    assert answers[0][0] == status and named in answers[0][1]["error"]
    assert answers[0][1] | {"error": ""} == {"error": "", **FRAME, "outputs": []}  # the frame TorchServe's gRPC reads
    assert answers[1][0] == 200 and answers[2][0] == 200 and "predictions" in answers[2][1]


def test_every_answer_carries_the_request_id_a_refusal_too():
    adapter, oip, instances = served("nw-regression")
    good = oip_body("nw-regression", instances[:1]) | {"id": "r-1"}
    bad = features(shape=(2, 2)) | {"id": "r-2"}
    (ok, okay), (refused, refusal) = ask(adapter, oip, [good, bad])
    assert (ok, okay["id"], refused, refusal["id"]) == (200, "r-1", 400, "r-2")
    unnamed = ask(adapter, oip, [oip_body("nw-regression", instances[:1])])[0][1]
    assert unnamed["id"] == ""  # none given: an empty one, as gRPC's own requests carry


def test_oip_requests_are_priced_under_the_same_budget():
    adapter, oip, instances = served("mha-regression", max_request_mmac=0.001)
    ((status, answer),) = ask(adapter, oip, [oip_body("mha-regression", instances)])
    assert status == 413 and answer["error"].startswith("request too costly")


@pytest.mark.parametrize(
    ("lengths", "named"),
    [([1, 2], "input 'lengths' has 2 values; input 'sequences' has 5"), ([0, 1, 1, 1, 1], "'lengths'[0] is 0")],
)
def test_ragged_sequence_lengths_are_checked(lengths, named):
    adapter, oip, instances = served("mha-regression")
    body = oip_body("mha-regression", instances)
    body["inputs"][1] |= {"shape": [len(lengths)], "data": lengths}
    ((status, answer),) = ask(adapter, oip, [body])
    assert status == 400 and named in answer["error"]


def test_the_handler_answers_oip_bodies_in_oip_form(tmp_path):
    make_model_dir(tmp_path, "nw")
    handler = AttentionHandler()
    handler.initialize(MockContext(tmp_path))
    body = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [2, 1], "data": [[0.5], [2.0]]}]}
    plain = {"instances": [0.5, 2.0]}
    out = handler.handle([{"body": json.dumps(b).encode()} for b in (body, plain)], MockContext(tmp_path))
    oip, reference = json.loads(out[0]), json.loads(out[1])
    assert oip["model_name"] == "nw-toy" and outputs(oip)["prediction"]["data"] == reference["predictions"]


def test_make_serve_turns_the_protocol_on_with_grpc_on_loopback_and_free_ports(tmp_path):
    from training.serving import serve

    ports = serve.free_ports()
    _, properties = serve.resolve_config(tmp_path, tmp_path, [], ports)
    assert properties["ts_open_inference_protocol"] == "true"
    assert properties["disable_token_authorization"] == "false"
    assert properties["grpc_inference_address"] == properties["grpc_management_address"] == "127.0.0.1"
    assert properties["grpc_inference_port"] == str(ports["grpc_inference_port"])


def ask_routed(adapter, oip, requests):
    """`requests`: (body, headers the front door set) per request of one batch."""
    raw = [json.dumps(body).encode() for body, _ in requests]
    answers, _ = answer_any(raw, [False] * len(raw), adapter, oip, adapter.limits, INFO, [h for _, h in requests])
    return answers


def test_the_front_doors_routes_answer_metadata_readiness_and_the_served_version_beside_a_batchs_predictions():
    adapter, oip, instances = served("nw-regression")
    body = oip_body("nw-regression", instances)
    answers = ask_routed(
        adapter,
        oip,
        [
            ({}, {"x-oip-route": "metadata"}),  # the front door's GET carries no body
            ({}, {"X-OIP-Route": "ready", "X-OIP-Version": INFO["version"]}),
            (body, {"X-OIP-Version": INFO["version"]}),
            ({"instances": instances}, {}),
        ],
    )
    assert [a.status for a in answers] == [200, 200, 200, 200]
    assert json.loads(answers[0].body) == metadata(oip, INFO)
    assert json.loads(answers[1].body) == {"name": INFO["name"], "ready": True}
    assert outputs(json.loads(answers[2].body))["prediction"]["shape"] == [5]
    assert "predictions" in json.loads(answers[3].body)
    kinds = [(a.protocol, a.route) for a in answers]
    assert kinds == [("oip", "metadata"), ("oip", "ready"), ("oip", ""), ("contract", "")]


@pytest.mark.parametrize(
    ("body", "headers", "named"),
    [
        ("oip", {"X-OIP-Version": "9"}, "version '9' is not served here; it serves version 1"),
        (None, {"X-OIP-Route": "metadata", "X-OIP-Version": "0"}, "version '0' is not served here"),
        ("oip", {"X-OIP-Route": "delete"}, "X-OIP-Route 'delete' is none of infer, metadata, ready"),
        ("contract", {"X-OIP-Version": "1"}, '"inputs" must be a non-empty list'),
    ],
)
def test_a_routed_request_for_another_version_or_route_is_refused_the_protocols_way(body, headers, named):
    adapter, oip, instances = served("nw-regression")
    given = {"oip": oip_body("nw-regression", instances), "contract": {"instances": instances}, None: {}}[body]
    (answer,) = ask_routed(adapter, oip, [(given, headers)])
    refusal = json.loads(answer.body)
    assert answer.status == 400 and named in refusal["error"], refusal
    assert refusal["model_name"] == INFO["name"] and refusal["outputs"] == [] and answer.protocol == "oip"


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("number", [math.nan, math.inf])
def test_a_non_finite_result_is_refused_as_in_predictions_in_either_form(number, binary):
    """A model whose answer holds NaN or infinity gets the contract's 422, whether its output goes as JSON or bytes."""
    adapter, kind, instances = served("nw-regression")
    body = oip_body("nw-regression", instances[:2]) | {"id": "r1"}
    if binary:
        body["parameters"] = {"binary_data_output": True}
    request = parse_oip(body, kind)
    answer = oip_answer(unrendered([0.5, number]), request, adapter.limits, INFO)
    refusal = json.loads(answer.body)
    assert answer.status == 422 and refusal["error"].startswith("non-finite result") and refusal["id"] == "r1"
    fine = oip_answer(unrendered([0.5, 1.5]), parse_oip(body, kind), adapter.limits, INFO)
    assert fine.status == 200 and fine.content_type == ("application/octet-stream" if binary else "application/json")
