"""The Open Inference Protocol (KServe v2) over the contract, as plain functions.

Request:  {"id"?, "parameters"?, "inputs": [{"name", "datatype", "shape", "data"}], "outputs"?: [{"name"}]}
Response: {"model_name", "model_version", "id"?, "outputs": [{"name", "datatype", "shape", "data"}]}
Error:    {"error": "<what>: <which tensor and why>", "model_name", "model_version", "id", "outputs": []} with the
          contract's 4xx status. Every answer carries the response's frame (model, version, id, outputs): TorchServe
          0.12's gRPC side reads those four fields off each answer whatever its status, and an answer without them
          throws in its frontend, which then restarts the worker and fails every request of the batch.

An OIP body is checked against its kind's tensors and parsed into the contract's request (`handlers/oip_tensors.py`,
`handlers/oip_kinds.py`) and answered by `contract.answer_batch` like any other request: the same parsing, limits,
pricing, batching and predictor; its result is written here as output tensors, never as the contract's text first.
Attention outputs are sent only when named.
TorchServe routes `POST /v2/models/<name>/infer` to this worker with the body unchanged (docs/http-api.md).

The protocol's routes TorchServe 0.12 lacks (`GET /v2/models/<name>[/versions/<v>]` metadata, its `/ready`, and
`/versions/<v>/infer`) reach this worker through the front door (`training/serving/balancer.py`), rewritten to the
infer route with two headers it alone sets: `X-OIP-Route` (`metadata` or `ready`) and `X-OIP-Version` (the version
asked for, refused naming the served one when it is another).
"""

from __future__ import annotations

import json
import math
import re
from functools import cache
from typing import Any

from .contract import (
    answer_batch,
    check_response_size,
    decode_body,
    non_finite_error,
    request_or_refusal,
)
from .errors import RequestError
from .oip_binary import CONTENT_TYPE, HEADER, binary_answer, binary_body, packed
from .oip_tensors import FLOATS, OipKind, OipRequest, invalid, parse_oip
from .strict_json import dumps, dumps_text
from .types import Adapter, Answer, Limits


def metadata(kind: OipKind, model_info: dict) -> dict:
    """What `GET /v2/models/<name>` answers for this model (not routed by TorchServe 0.12: docs/http-api.md)."""
    return {
        "name": model_info["name"],
        "versions": [model_info["version"]],
        "platform": "pytorch_torchserve",
        "inputs": [spec.metadata() for spec in kind.inputs],
        "outputs": [output.tensor.metadata() for output in kind.outputs],
    }


ROUTE_HEADER, VERSION_HEADER = "X-OIP-Route", "X-OIP-Version"
ROUTE, VERSION, LENGTH = ROUTE_HEADER.lower(), VERSION_HEADER.lower(), HEADER.lower()
ROUTES = ("infer", "metadata", "ready")


def lowered(headers: dict[str, Any] | None) -> dict[str, str]:
    """A request's text headers by lower-case name: whatever case the client or the front door wrote them in."""
    return {k.lower(): v for k, v in headers.items() if type(v) is str} if headers else {}


def routed(route: str | None, version: str | None, kind: OipKind, model_info: dict) -> Answer | None:
    """The answer to a request the front door routed here (metadata, readiness, another version), or None for an
    inference this worker should run."""
    if route not in (None, *ROUTES):
        return oip_error(invalid(f"{ROUTE_HEADER} {route[:20]!r} is none of {', '.join(ROUTES)}"), model_info)
    if version is not None and version != model_info["version"]:
        served = model_info["version"]
        detail = f"model '{model_info['name']}' version {version[:20]!r} is not served here; it serves version {served}"
        return oip_error(invalid(detail), model_info)
    if route == "metadata":
        return protocol_answer(json.dumps(metadata(kind, model_info)), "metadata")
    if route == "ready":
        return protocol_answer(json.dumps({"name": model_info["name"], "ready": True}), "ready")
    return None


def protocol_answer(body: str, route: str) -> Answer:
    return Answer(200, body, {}, protocol="oip", route=route)


def is_oip(body: dict) -> bool:
    return "inputs" in body and "instances" not in body


# respond


def stacked(rows: list) -> tuple[list, list[int]]:
    """Rows (numbers, strings, or nested lists of them) as flat row-major data and a shape; ragged rows are
    padded with zeros to the longest (a sequence's weights past its length)."""
    shape = [len(rows)]
    level = rows
    while level and set(map(type, level)) == LISTS:
        shape.append(max(map(len, level)))
        level = [value for item in level for value in item]
    if len(shape) == 1:
        return rows, shape
    if len(level) == math.prod(shape):  # not ragged
        return level, shape
    return [value for row in rows for value in padded(row, shape[1:])], shape


LISTS = {list}


def padded(row: list, shape: list[int]) -> list:
    if not shape:
        return [row]
    items = row + [[] if len(shape) > 1 else 0] * (shape[0] - len(row))
    return [value for item in items for value in padded(item, shape[1:])]


def oip_answer(answer: Answer, request: OipRequest, limits: Limits, model_info: dict) -> Answer:
    """The contract's answer as OIP: output tensors on success, `{"error"}` naming the input otherwise. A success
    is the contract's unrendered answer (`Request.rendered`), written here in OIP form."""
    if answer.status != 200:
        body = json.loads(answer.body)
        error = RequestError(body["error"], body.get("detail", ""), answer.status, answer.headers)
        refusal = oip_refusal(error, request, model_info)
        refusal.outcome = answer.outcome  # the contract's own outcome, as the metrics count it
        return refusal
    results, tensors, blobs = answer.payload, [], []
    for output in request.outputs:
        if request.explain:
            rows = [output.take(result["prediction"], result) for result in results]
        else:
            rows = [output.take(result, NOTHING) for result in results]
        data, shape = stacked(rows)
        spec, sizes = output.tensor, ",".join(map(str, shape))
        if spec.name in request.binary:  # raw bytes could carry NaN or infinity; JSON refuses them, and so does this
            if spec.datatype in FLOATS and not all(map(math.isfinite, data)):
                return oip_error(non_finite_error(), model_info, request.id)
            blobs.append(packed(data, spec.datatype))
            tensors.append(f'{spec.head}[{sizes}],"parameters":{{"binary_data_size":{len(blobs[-1])}}}}}')
            continue
        try:
            tensors.append(f'{spec.head}[{sizes}],"data":{dumps(data)}}}')
        except ValueError:  # NaN or infinity
            return oip_error(non_finite_error(), model_info, request.id)
    head = frame_head(model_info["name"], model_info["version"])
    text = f'{head}"id":{dumps_text(request.id or "")},"outputs":[{",".join(tensors)}]}}'
    body, headers = (text, answer.headers) if not blobs else binary_answer(text, blobs)
    if blobs:
        answer.content_type = CONTENT_TYPE
    try:
        check_response_size(len(body), limits)  # strict JSON is ASCII: characters are bytes
    except RequestError as error:
        return oip_error(error, model_info, request.id)
    answer.body, answer.headers, answer.payload, answer.protocol = body, headers, None, "oip"  # figures stay
    return answer


NOTHING: dict = {}  # an unexplained result's explanation


def oip_refusal(error: RequestError, request: OipRequest, model_info: dict) -> Answer:
    """The contract's refusal in OIP form, naming the OIP input where the contract named its instances."""
    detail = re.sub(r"\binstances\[", f"{request.main_input}[", error.detail)
    renamed = RequestError(error.error, detail, error.status, error.headers)
    return oip_error(renamed, model_info, request.id)


@cache
def frame_head(name: str, version: str) -> str:
    """An answer's frame up to its id: {"model_name":…,"model_version":…,"""
    return dumps({"model_name": name, "model_version": version})[:-1] + ","


def frame(model_info: dict, request_id: str | None) -> dict:
    """What every OIP answer carries, a refusal too (the module's docstring says why)."""
    return {"model_name": model_info["name"], "model_version": model_info["version"], "id": request_id or ""}


def oip_error(error: RequestError, model_info: dict, request_id: str | None = None) -> Answer:
    body = {"error": str(error)} | frame(model_info, request_id) | {"outputs": []}
    return Answer(error.status, json.dumps(body), error.headers, outcome=error.error, protocol="oip")


def given_id(body: Any) -> str | None:
    """A request's own id, when it gave a usable one (for the frame of its refusal)."""
    request_id = body.get("id") if isinstance(body, dict) else None
    return request_id if isinstance(request_id, str) else None


def answer_any(
    bodies: list[Any],
    explain: list[bool],
    adapter: Adapter,
    kind: OipKind,
    limits: Limits,
    model_info: dict,
    headers: list[dict[str, Any]] | None = None,
) -> tuple[list[Answer], list[bool]]:
    """Contract and OIP requests of one batch answered together: (answers, whether each was explained).
    A request's `Inference-Header-Content-Length` (in its `headers`) marks it binary OIP; the front door's
    `X-OIP-*` headers route it (the module's docstring)."""
    requests: dict[int, OipRequest] = {}
    refused: dict[int, Answer] = {}
    contract_bodies, explained = list(bodies), list(explain)
    for i, raw in enumerate(bodies):
        given = lowered(headers[i]) if headers else {}
        length, route, version = given.get(LENGTH), given.get(ROUTE), given.get(VERSION)
        forced = route is not None or version is not None
        if forced and (answer := routed(route, version, kind, model_info)) is not None:
            refused[i] = answer  # answered without the model
            continue
        try:
            body = decode_body(raw, limits) if length is None else binary_body(raw, length, limits)
        except RequestError as error:
            if length is not None or forced:
                refused[i] = oip_error(error, model_info)
            continue  # else the contract answers it, in its own words
        contract_bodies[i] = body  # decoded once
        if not (forced or is_oip(body)):
            continue
        try:
            request = parse_oip(body, kind)
        except RequestError as error:
            refused[i] = oip_error(error, model_info, given_id(body))
            continue
        parsed = request_or_refusal({"instances": request.instances}, adapter, limits, request.explain)
        if type(parsed) is RequestError:
            refused[i] = oip_refusal(parsed, request, model_info)
            continue
        parsed.rendered = False  # answered in OIP form by `oip_answer`
        requests[i], contract_bodies[i], explained[i] = request, parsed, request.explain
    pending = [i for i in range(len(bodies)) if i not in refused]
    pending_bodies, pending_explain = [contract_bodies[i] for i in pending], [explained[i] for i in pending]
    answered = answer_batch(pending_bodies, pending_explain, adapter, limits, model_info)
    answers: list[Answer] = [refused.get(i) for i in range(len(bodies))]  # type: ignore[misc]
    for i, answer in zip(pending, answered):
        answers[i] = oip_answer(answer, requests[i], limits, model_info) if i in requests else answer
    return answers, explained
