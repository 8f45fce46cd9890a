"""The contract's types: request limits, a request's priced cost, a parsed request, an answer, and what a model
kind's adapter provides. Imports nothing else of the handlers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from torch import nn

from training.nn import Family, bounds

EXPLAIN_KEYS = ("values", "index", "none")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 6_000_000  # request body; TorchServe's own max_request_size is set above it
    max_instances: int = bounds.MAX_INSTANCES  # the bounds' meanings: training/nn/bounds.py
    max_steps: int = bounds.MAX_STEPS
    max_request_mmac: float = bounds.MAX_REQUEST_MMAC
    max_batch_mmac: float = bounds.MAX_BATCH_MMAC
    max_pass_mmac: float = 1_000  # compute per forward pass: bounds memory and padding
    max_response_bytes: int = bounds.MAX_RESPONSE_BYTES
    batch_seconds: float = 15.0  # a batch still running after this answers its unfinished requests 503
    max_abs_z: float = bounds.MAX_ABS_Z
    top_keys: int = 5  # NW explanations list this many most-attended training points
    # What NW explanations reveal of the training rows: "values" (each top key's inputs and target), "index"
    # (which rows, by index and file row, and their weights) or "none" (the prediction alone).
    explain_keys: str = "values"
    metrics: bool = True  # the handler's metrics (handlers/metrics.py); off only to measure what they cost
    buffered_reads: bool = True  # the worker reads requests through a buffer (handlers/worker_io.py); off to measure

    def __post_init__(self) -> None:
        if self.explain_keys not in EXPLAIN_KEYS:
            raise ValueError(f"explain_keys is {self.explain_keys!r}; expected one of {', '.join(EXPLAIN_KEYS)}")

    @classmethod
    def from_options(cls, options: dict) -> Limits:
        """From the model-config YAML's `handler:` section; unknown keys are someone else's settings."""
        fields = cls.__dataclass_fields__
        return cls(**{k: as_type(type(getattr(cls, k)), k, v) for k, v in options.items() if k in fields})


def as_type(kind: type, name: str, value: Any) -> Any:
    """A model-config option as its field's type; a switch must be true or false (bool("false") is True)."""
    if kind is not bool:
        return kind(value)
    if isinstance(value, bool):
        return value
    if str(value).lower() in ("true", "false"):
        return str(value).lower() == "true"
    raise ValueError(f"handler option {name} is {value!r}; expected true or false")


@dataclass
class Cost:
    mmac: float  # millions of multiply-adds
    response_bytes: int  # estimated size of the JSON answer


@dataclass
class Request:
    items: Any  # the adapter's validated instances
    count: int
    explain: bool
    heads: bool
    cost: Cost
    rendered: bool = True  # False: its answer keeps the result as `payload`, for another protocol to write (OIP)


@dataclass
class Answer:
    status: int
    body: str | bytes  # strict JSON; bytes: JSON then binary tensors (handlers/oip_binary.py)
    headers: dict[str, str]
    content_type: str = "application/json"  # a binary OIP answer's: application/octet-stream
    outcome: str = "answered"  # or the contract's error name ("invalid instance", "over capacity", ...)
    instances: int = 0  # how many the request held, once parsed
    mmac: float = 0.0  # its priced cost, once parsed
    novelty: list[float | None] = field(default_factory=list)  # answered: its instances' novelty scores
    beyond_range: int = 0  # answered: its instances with an input beyond the training data's range
    protocol: str = "contract"  # or "oip": the Open Inference Protocol (handlers/oip.py)
    route: str = ""  # what the request asked besides a prediction or an explanation: "metadata", "ready"
    payload: Any = field(default=None, repr=False)  # an unrendered success's result (`Request.rendered`), for OIP


@dataclass
class Ran:
    """A group's run, per request: its results (None: unfinished in time), its instances' novelty scores
    (`training/nn/novelty.py`; None where measuring failed) and how many instances lie beyond the training
    data's range (tabular models; 0 elsewhere)."""

    results: list[list | None]
    novelty: list[list[float | None]]
    beyond_range: list[int]


class Adapter(Protocol):
    """What differs between model kinds; see `handlers/tabular.py`, `handlers/sequences.py`, `handlers/text.py`,
    `handlers/images.py`. A kind whose requests carry fields besides the instances (pixel: "queries") also
    has `parse_options(items, body, explain) -> items`."""

    family: ClassVar[Family]  # the model kind it answers for (`training/nn/families.py`)
    model: nn.Module
    per_head_weights: bool  # whether `"heads": true` can be answered (multi-head attention models)

    def example(self) -> bytes: ...

    def parse(self, instances: list) -> Any: ...

    def cost(self, items: Any, explain: bool, heads: bool) -> Cost: ...

    def run(self, batch: list[Any], explain: bool, heads: bool, deadline: float) -> Ran: ...

    def budget_hint(self) -> str: ...
