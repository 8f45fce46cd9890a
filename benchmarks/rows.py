"""The benchmark rows, each declared once: its name (`--only`, results.json), its runner, its section of
results.md and its target in a phrase (`python -m benchmarks --help`; the section states it with the verdict).
The order here is the rows' order in results.md."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from benchmarks import (
    allocator,
    bookkeeping,
    fleet_row,
    large_nw,
    mha,
    nw_kernel,
    oip,
    quality,
    samplers,
    score,
    serving,
    serving_ops,
    tuning,
)


@dataclass(frozen=True)
class Settings:
    """What one `python -m benchmarks` run asks of every row."""

    quick: bool  # small sizes and budgets (a smoke test, not a result)
    client: str  # the serving load generator: auto, wrk or python
    devices: tuple[str, ...]  # where the kernel rows run: cpu, and cuda when there is one


@dataclass(frozen=True)
class Row:
    name: str
    run: Callable[[Settings], list[dict]]
    section: Callable[[list[dict]], str]
    target: str


def per_device(run: Callable[[bool, str], list[dict]]) -> Callable[[Settings], list[dict]]:
    """A kernel row's runner on each of the run's devices in turn."""
    return lambda s: [r for device in s.devices for r in run(s.quick, device)]


ROWS = (
    Row(
        "nw_kernel",
        per_device(nw_kernel.run),
        nw_kernel.section,
        "the fused NW kernel ≥ 1.5× faster than the direct one at the largest size, memory growing with Q + K",
    ),
    Row("mha", per_device(mha.run), mha.section, "ours ≤ 1.0× the time of torch.nn.MultiheadAttention"),
    Row(
        "serving",
        lambda s: serving.run(s.quick, s.client),
        serving.section,
        "ours ≥ 0.9× a bare baseline handler, batched ≥ 5× unbatched",
    ),
    Row(
        "tuning",
        lambda s: tuning.run(s.quick),
        tuning.section,
        f"the best trial within {tuning.TARGET - 1:.0%} of a grid search's test MSE",
    ),
    Row("quality", lambda s: quality.run(s.quick), quality.section, "each task against tuned peers on the same splits"),
    Row(
        "batch_delay",
        lambda s: serving_ops.run_delays(s.quick, s.client),
        serving_ops.delay_section,
        "a maxBatchDelay with c64 ≥ 0.9× the best throughput and c1 p50 ≤ 2 ms",
    ),
    Row(
        "soak",
        lambda s: serving_ops.run_soak(s.quick, s.client),
        serving_ops.soak_section,
        f"0 errors at concurrency {serving_ops.SOAK_CONCURRENCY} for {serving_ops.SOAK_SECONDS} s",
    ),
    Row(
        "metrics_cost",
        lambda s: serving_ops.run_metrics_cost(s.quick, s.client),
        serving_ops.metrics_section,
        f"the handler's metrics on ≥ {serving_ops.METRICS_MIN_RATIO}× the throughput off",
    ),
    Row(
        "large_nw",
        lambda s: large_nw.run(s.quick),
        large_nw.section,
        "a trial's time, memory, archive size and test R² at 100k and 1M rows",
    ),
    Row(
        "samplers",
        lambda s: samplers.run(s.quick),
        samplers.section,
        "the default sampler the best or within one standard error of it",
    ),
    Row(
        "score",
        lambda s: score.run(s.quick),
        score.section,
        f"`make score` of a 1M-row file ≤ {score.TARGET_SECONDS:.0f} s",
    ),
    Row(
        "bookkeeping",
        lambda s: bookkeeping.run(s.quick),
        bookkeeping.section,
        f"tracked ≥ {bookkeeping.TARGET_RATIO}× the untracked trials per minute on nw-sine",
    ),
    Row(
        "allocator",
        lambda s: allocator.run(s.quick),
        allocator.section,
        f"a 300k-row tune ≥ {allocator.SPEEDUP}× as fast with the kept allocator thresholds as with glibc's",
    ),
    Row(
        "oip",
        lambda s: oip.run(s.quick),
        oip.section,
        f"OIP REST (JSON and binary) ≥ {oip.TARGET}× the throughput of /predictions at c64; gRPC reported",
    ),
    Row(
        "fleet",
        lambda s: fleet_row.run(s.quick),
        fleet_row.section,
        f"the balancer adds ≤ {fleet_row.ADDED_P50_MS} ms p50 at c1 and keeps ≥ {fleet_row.THROUGHPUT}× direct "
        "throughput at c64 (1 replica); no failed request through a killed frontend, a killed worker, a hung replica",
    ),
)
BY_NAME = {row.name: row for row in ROWS}
