"""The binary tensor extension: raw tensor bytes after the JSON, in and out, as tritonclient reads and writes them;
mixed with JSON tensors; and bytes that do not add up refused with a 400 naming the problem."""

import copy
import json
import re

import numpy as np
import pytest
from test_agreement import INFO, KINDS
from test_handler import MockContext, make_model_dir
from test_oip import oip_body, served
from tritonclient.http import InferResult
from tritonclient.utils import serialize_byte_tensor, triton_to_np_dtype

from handlers.attention_handler import AttentionHandler
from handlers.contract import agrees
from handlers.oip import answer_any

HEADER = "Inference-Header-Content-Length"


def raw_bytes(data, datatype):
    if datatype == "BYTES":
        return serialize_byte_tensor(np.array(data, dtype=object)).item()
    return np.asarray(data, dtype=triton_to_np_dtype(datatype)).tobytes()


def as_binary(body, names=None, extra=b""):
    """The body with the named inputs (all when None) moved after the JSON as raw bytes: (bytes, header length)."""
    header, blobs = copy.deepcopy(body), []
    for tensor in header["inputs"]:
        if names is None or tensor["name"] in names:
            blobs.append(raw_bytes(tensor.pop("data"), tensor["datatype"]))
            tensor["parameters"] = {"binary_data_size": len(blobs[-1])}
    text = json.dumps(header).encode()
    return text + b"".join(blobs) + extra, str(len(text))


def ask(adapter, kind, requests):
    """`requests`: (body bytes, header length or None) per request of one batch."""
    bodies = [raw for raw, _ in requests]
    headers = [{} if length is None else {HEADER: length} for _, length in requests]
    answers, _ = answer_any(bodies, [False] * len(bodies), adapter, kind, adapter.limits, INFO, headers)
    return answers


def tensors(answer):
    """An answer's outputs as {name: flat list}, read by tritonclient's own decoder when binary."""
    length = answer.headers.get(HEADER)
    body = answer.body if isinstance(answer.body, bytes) else answer.body.encode()
    result = InferResult.from_response_body(body, header_length=int(length) if length else None)
    names = [o["name"] for o in result.get_response()["outputs"]]
    return {name: result.as_numpy(name).flatten().tolist() for name in names}


def same(got, expected):
    for name, values in expected.items():
        if values and isinstance(values[0], str):
            assert [v.decode() if isinstance(v, bytes) else v for v in got[name]] == values, name
        else:
            assert agrees(got[name], values), name


@pytest.mark.parametrize("kind", list(KINDS))
def test_binary_inputs_and_outputs_give_the_json_numbers(kind):
    adapter, oip, instances = served(kind)
    body = oip_body(kind, instances)
    (reference,) = ask(adapter, oip, [(json.dumps(body).encode(), None)])
    expected = {o["name"]: o["data"] for o in json.loads(reference.body)["outputs"]}
    binary_out = body | {"parameters": {"binary_data_output": True}}
    answers = ask(adapter, oip, [as_binary(binary_out), as_binary(body), (json.dumps(binary_out).encode(), None)])
    for answer in answers:
        assert answer.status == 200, answer.body
        same(tensors(answer), expected)
    assert answers[0].content_type == "application/octet-stream" and HEADER not in answers[1].headers
    header = json.loads(answers[0].body[: int(answers[0].headers[HEADER])])
    assert all("data" not in o and o["parameters"]["binary_data_size"] > 0 for o in header["outputs"])


def test_inputs_and_outputs_mix_binary_and_json():
    adapter, oip, instances = served("mha-classification")
    body = oip_body("mha-classification", instances)
    (reference,) = ask(adapter, oip, [(json.dumps(body).encode(), None)])
    body |= {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "label", "parameters": {"binary_data": False}}, {"name": "probabilities"}],
    }
    (answer,) = ask(adapter, oip, [as_binary(body, ["lengths"])])  # sequences in JSON, lengths in binary
    header = {o["name"]: o for o in json.loads(answer.body[: int(answer.headers[HEADER])])["outputs"]}
    assert "data" in header["label"] and header["probabilities"]["parameters"]["binary_data_size"] == 5 * 3 * 4
    same(tensors(answer), {o["name"]: o["data"] for o in json.loads(reference.body)["outputs"]})


def features(*values, datatype="FP32", blob=None, size=None):
    """A binary `features` request of shape [len(values) / 2, 2]: (JSON header, raw bytes, header length)."""
    blob = np.asarray(values, dtype=triton_to_np_dtype(datatype)).tobytes() if blob is None else blob
    parameters = {"binary_data_size": len(blob) if size is None else size}
    shape = [len(values) // 2, 2]
    text = json.dumps(
        {"inputs": [{"name": "features", "datatype": datatype, "shape": shape, "parameters": parameters}]}
    )
    return text.encode(), blob, str(len(text))


def sent(text, blob, length):
    return text + blob, length


TWO = features(1.0, 2.0, 3.0, 4.0)


@pytest.mark.parametrize(
    ("request_", "named"),
    [
        ((TWO[0] + TWO[1], "9999"), "header says 9999 bytes of JSON; the body has"),
        ((TWO[0] + TWO[1], "12abc"), "header is '12abc'; expected the JSON header's length in bytes"),
        ((TWO[0] + TWO[1] + b"\x00" * 3, TWO[2]), "3 bytes follow the last binary input"),
        ((TWO[0] + TWO[1][:-4], TWO[2]), "input 'features' has binary_data_size 16; only 12 bytes"),
        (sent(*features(1.0, 2.0, blob=b"\x00" * 6)), "input 'features' has 6 bytes, not a whole number of 4-byte"),
        (sent(*features(1.0, 2.0, datatype="BYTES", blob=b"\x05\x00")), "features' element 0 has a cut-off"),
        (sent(*features(1.0, 2.0, datatype="BF16", blob=b"\x00" * 4)), 'datatype "BF16"; no binary form'),
        (sent(*features(1.0, 2.0, size=-1)), "input 'features' has binary_data_size -1; expected a byte count"),
        ((TWO[0][:-1] + TWO[1], str(len(TWO[0]) - 1)), "invalid JSON"),
    ],
)
def test_binary_that_does_not_add_up_gets_a_400_naming_it_and_fails_alone(request_, named):
    adapter, oip, instances = served("nw-regression")
    good = as_binary(oip_body("nw-regression", instances[:2]))
    bad, ok = ask(adapter, oip, [request_, good])
    refusal = json.loads(bad.body)
    assert bad.status == 400 and named in refusal["error"] and refusal["outputs"] == [] and "model_name" in refusal
    assert ok.status == 200


def test_bytes_elements_must_be_utf8_and_whole():
    adapter, oip, _ = served("s2s")
    header = {"inputs": [{"name": "texts", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 6}}]}
    text = json.dumps(header).encode()
    (answer,) = ask(adapter, oip, [(text + b"\x02\x00\x00\x00\xff\xfe", str(len(text)))])
    assert answer.status == 400 and "input 'texts' element 0 is not UTF-8 text" in json.loads(answer.body)["error"]


def test_a_wrong_shape_in_binary_is_named_as_in_json():
    adapter, oip, _ = served("nw-regression")
    text, _, length = features(1.0, 2.0, 3.0, 4.0, 5.0, 6.0)
    (answer,) = ask(
        adapter, oip, [(text.replace(b'"binary_data_size": 24', b'"binary_data_size": 12') + b"\0" * 12, length)]
    )
    error = json.loads(answer.body)["error"]
    assert answer.status == 400 and "input 'features' has shape [3, 2], 6 values, but 3 values of data" in error


def test_the_handler_reads_the_header_in_any_case_and_answers_bytes(tmp_path):
    make_model_dir(tmp_path, "nw")
    handler = AttentionHandler()
    handler.initialize(MockContext(tmp_path))
    body = {"inputs": [{"name": "features", "datatype": "FP64", "shape": [2, 1], "data": [0.5, 2.0]}]}
    raw, length = as_binary(body | {"parameters": {"binary_data_output": True}})
    context = MockContext(tmp_path, request_headers={0: {"inference-header-content-length": length}})
    out = handler.handle([{"body": raw}, {"body": b'{"instances": [0.5, 2.0]}'}], context)
    assert isinstance(out[0], bytes) and context.headers[0]["content-type"] == "application/octet-stream"
    result = InferResult.from_response_body(out[0], header_length=int(context.headers[0][HEADER]))
    assert result.as_numpy("prediction").tolist() == json.loads(out[1])["predictions"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"parameters": {"binary_data_output": "yes"}}, "binary_data_output must be true or false"),
        ({"outputs": [{"name": "prediction", "parameters": {"binary_data": 1}}]}, '"prediction" binary_data must be'),
    ],
)
def test_binary_output_switches_are_booleans(extra, named):
    adapter, oip, instances = served("nw-regression")
    (answer,) = ask(adapter, oip, [(json.dumps(oip_body("nw-regression", instances) | extra).encode(), None)])
    assert answer.status == 400 and named in json.loads(answer.body)["error"]


def test_binary_answers_keep_the_response_budget():
    adapter, oip, instances = served("nw-regression", max_response_bytes=170)  # the JSON alone is 141 bytes
    (answer,) = ask(
        adapter, oip, [as_binary(oip_body("nw-regression", instances) | {"parameters": {"binary_data_output": True}})]
    )
    assert answer.status == 413 and re.search(
        r"the answer has 1[89]\d bytes; at most 170", json.loads(answer.body)["error"]
    )
