"""The HTTP contract as plain functions, independent of TorchServe: parse + validate -> predict -> respond.

Request:  {"instances": [...], "heads": false}
Response: {"predictions": [...], "model": {...}}  or  {"explanations": [...], "model": {...}}
Error:    {"error": "<what>", "detail": "<which part is wrong and why>"} with a 4xx status.

Every request is priced before any work is done: compute in millions of multiply-adds (MMAC) and the
size of its answer. A request over the per-request budget gets a 413 naming the budget; a batch takes
requests cheapest first up to the per-batch budget and answers the rest 503 with Retry-After, so one
worker always answers a batch well within its response timeout and small requests are never failed or
held back by large ones. What the model kinds differ in (parsing, pricing, running) lives in their
adapters (`handlers/tabular.py`, `handlers/sequences.py`, `handlers/text.py`, `handlers/images.py`).
"""

from __future__ import annotations

import json
import time
from typing import Any

from torch import nn

from training.nn import family_of

from .answers import agrees
from .errors import RequestError
from .images import ImageAdapter
from .sequences import SequenceAdapter
from .strict_json import dumps, loads
from .tabular import TabularAdapter
from .text import TextAdapter
from .types import Adapter, Answer, Limits, Request

__all__ = ["Answer", "Limits", "RequestError", "adapter_for", "agrees", "answer_batch", "decode_body", "parse_request"]


# One adapter per model kind, by the name of its family (`training/nn/families.py`).
ADAPTERS: dict[str, type[Adapter]] = {
    adapter.family.name: adapter for adapter in (TabularAdapter, SequenceAdapter, TextAdapter, ImageAdapter)
}


def adapter_for(model: nn.Module, limits: Limits) -> Adapter:
    return ADAPTERS[family_of(model).name](model, limits)


# parse + validate


def check_body_size(raw: bytes | bytearray, limits: Limits) -> None:
    if len(raw) > limits.max_body_bytes:
        detail = f"the body has {len(raw)} bytes; at most {limits.max_body_bytes}"
        raise RequestError("body too large", detail, status=413)


def decode_body(raw: Any, limits: Limits) -> dict:
    """The request body as a dict, whatever form the server hands it over in."""
    if isinstance(raw, (bytes, bytearray)):
        check_body_size(raw, limits)
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise RequestError("invalid body", "the body is not UTF-8 text") from None
    if isinstance(raw, str):
        try:
            raw = loads(raw)
        except json.JSONDecodeError as error:
            raise RequestError("invalid JSON", f"the body is not valid JSON ({error})") from None
        except RecursionError:
            raise RequestError("invalid JSON", "the body is nested too deeply") from None
        except ValueError as error:  # e.g. an integer with more digits than Python converts
            raise RequestError("invalid JSON", f"the body holds a number that cannot be read ({error})") from None
    if not isinstance(raw, dict):
        raise RequestError("invalid body", 'expected a JSON object like {"instances": [...]}')
    return raw


def parse_request(raw: Any, adapter: Adapter, limits: Limits, explain: bool = False) -> Request:
    body = decode_body(raw, limits)
    instances = body.get("instances")
    if not isinstance(instances, list):
        raise RequestError("missing instances", 'the body needs an "instances" list')
    if not instances:
        raise RequestError("empty instances", '"instances" is empty: send at least one')
    if len(instances) > limits.max_instances:
        detail = f"{len(instances)} instances; at most {limits.max_instances} per request"
        raise RequestError("too many instances", detail, status=413)
    heads = body.get("heads", False)
    if not isinstance(heads, bool):
        raise RequestError("invalid heads", '"heads" must be true or false')
    if heads and not adapter.per_head_weights:
        detail = '"heads": true asks for per-head attention weights; this model has no heads (only mha models do)'
        raise RequestError("invalid heads", detail)
    if heads and not explain:
        detail = '"heads": true asks for per-head attention weights, which only explanations carry: use /explanations'
        raise RequestError("invalid heads", detail)
    items = adapter.parse(instances)
    if hasattr(adapter, "parse_options"):
        items = adapter.parse_options(items, body, explain)
    cost = adapter.cost(items, explain, heads)
    if cost.mmac > limits.max_request_mmac:
        detail = (
            f"this request needs about {cost.mmac:,.0f} million multiply-adds; one request may need at most "
            f"{limits.max_request_mmac:,.0f} ({adapter.budget_hint()}): split it into smaller requests"
        )
        raise RequestError("request too costly", detail, status=413)
    if cost.response_bytes > limits.max_response_bytes:
        detail = (
            f"the answer would be about {cost.response_bytes:,} bytes; at most {limits.max_response_bytes:,}: "
            "send fewer or shorter instances"
            + (", or leave out per-head weights" if heads else "")
            + (", or fewer queries" if explain and body.get("queries") else "")
        )
        raise RequestError("response too large", detail, status=413)
    return Request(items, len(instances), explain, heads, cost)


# respond


def render_result(key: str, result: Any, model_json: str, limits: Limits) -> Answer:
    """{key: result, "model": info} as strict JSON (no NaN or Infinity) within the response budget, or an error that
    says which failed; the model's part (`model_json`) written once per batch."""
    try:
        text = f'{{"{key}":{dumps(result)},"model":{model_json}}}'
        check_response_size(len(text), limits)
    except RequestError as error:  # (a ValueError too: first)
        return error_answer(error)
    except ValueError:
        return error_answer(non_finite_error())
    return Answer(200, text, {})


def non_finite_error() -> RequestError:
    return RequestError("non-finite result", "the model produced NaN or infinity for this input", status=422)


def check_response_size(size: int, limits: Limits) -> None:
    """Refuses an answer of `size` bytes over the response budget."""
    if size > limits.max_response_bytes:
        detail = f"the answer has {size:,} bytes; at most {limits.max_response_bytes:,}: send fewer instances"
        raise RequestError("response too large", detail, status=413)


def unrendered(result: Any) -> Answer:
    """A success whose result another protocol writes (`Request.rendered`)."""
    return Answer(200, "", {}, payload=result)


def error_answer(error: RequestError) -> Answer:
    return Answer(error.status, json.dumps(error.body()), error.headers, outcome=error.error)


def over_capacity(detail: str) -> RequestError:
    return RequestError("over capacity", detail + "; retry shortly", status=503, headers={"Retry-After": "1"})


def admit(requests: dict[int, Request], limits: Limits) -> tuple[list[int], list[int]]:
    """Cheapest first up to the batch budget: (admitted, refused) request indices."""
    admitted, refused, total = [], [], 0.0
    for i in sorted(requests, key=lambda i: requests[i].cost.mmac):
        if total + requests[i].cost.mmac <= limits.max_batch_mmac or not admitted:
            admitted.append(i)
            total += requests[i].cost.mmac
        else:
            refused.append(i)
    return sorted(admitted), refused


def request_or_refusal(raw: Any, adapter: Adapter, limits: Limits, explain: bool) -> Request | RequestError:
    """`parse_request`, its refusal returned: what the request gets wrong, or a bug's 500 (that request alone fails;
    the worker and the batch go on)."""
    try:
        return parse_request(raw, adapter, limits, explain)
    except RequestError as error:
        return error
    except Exception as error:
        return RequestError("internal error", f"{type(error).__name__}: {error}", status=500)


def answer_batch(
    bodies: list[Any], explain: list[bool], adapter: Adapter, limits: Limits, model_info: dict
) -> list[Answer]:
    """One answer per request. A bad request fails alone; the valid ones share forward passes
    (predictions, explanations, and explanations with per-head weights run apart). A body may be a `Request`
    another protocol parsed already (its own `explain` counts then)."""
    answers: list[Answer | None] = [None] * len(bodies)
    requests: dict[int, Request] = {}
    for i, raw in enumerate(bodies):
        parsed = raw if type(raw) is Request else request_or_refusal(raw, adapter, limits, explain[i])
        if type(parsed) is Request:
            requests[i] = parsed
        else:
            answers[i] = error_answer(parsed)
    admitted, refused = admit(requests, limits)
    for i in refused:
        detail = f"this batch already holds {limits.max_batch_mmac:,.0f} million multiply-adds of work"
        answers[i] = error_answer(over_capacity(detail))
    deadline = time.monotonic() + limits.batch_seconds
    model_json = dumps(model_info)
    # One group per combination of options the admitted requests hold: none can fall between groups.
    for wants in sorted({(requests[i].explain, requests[i].heads) for i in admitted}):
        group = [i for i in admitted if (requests[i].explain, requests[i].heads) == wants]
        try:
            ran = adapter.run([requests[i].items for i in group], *wants, deadline)
        except Exception as error:  # a bug or resource exhaustion: answer, never kill the worker
            for i in group:
                answers[i] = error_answer(RequestError("internal error", f"{type(error).__name__}: {error}", 500))
            continue
        key = "explanations" if wants[0] else "predictions"
        for i, result, novelty, beyond in zip(group, ran.results, ran.novelty, ran.beyond_range):
            if result is None:
                answers[i] = error_answer(over_capacity(f"the batch ran past {limits.batch_seconds:g} s"))
            else:
                answer = render_result(key, result, model_json, limits) if requests[i].rendered else unrendered(result)
                answer.novelty, answer.beyond_range = novelty, beyond
                answers[i] = answer
    for i, request in requests.items():  # what the metrics count: instances and priced cost of parsed requests
        answers[i].instances, answers[i].mmac = request.count, request.cost.mmac
    return answers
