"""Row 15: the fleet — one replica reached directly, one behind HAProxy, two behind HAProxy; and faults under load.

nw-sine, as shipped (batched), row 3's instance per request, at concurrency 1 and 64. "direct" is the one-replica
fleet's replica reached on its own address with its own token, so the only difference from "balancer, 1 replica"
is the balancer; "balancer, 2 replicas" is a second fleet. Variants interleaved, each cell the median-throughput run
of five. Then, on the two-replica fleet under a steady load of every kind at c64: a replica's frontend killed, a
worker killed, a replica stopped (SIGSTOP) until out of rotation and continued: every request counted. A quick run
(a smoke test) measures the first two variants alone, without faults: test_fleet injects them in the suite.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from benchmarks import faults
from benchmarks.load import interleaved, load_of, median_run
from benchmarks.markdown import table, verdict
from benchmarks.serving import PAYLOADS, build_archives, champion_registry, default_variants, variants_table
from training.infra.processes import free_ports
from training.serving import fleet

CONCURRENCY, QUICK_CONCURRENCY = (1, 64), (1, 16)
REPEATS, SECONDS, WARMUP = 7, 3.0, 1.0
ADDED_P50_MS = 0.3  # the balancer's own cost at c1
THROUGHPUT = 0.9  # one replica behind the balancer against it reached directly, at the top concurrency
MODEL = "nw-sine"
VARIANTS = ("direct, 1 replica", "balancer, 1 replica", "balancer, 2 replicas")


def start_fleet(stack: ExitStack, root: Path, replicas: int, store: Path, uri: str) -> fleet.Fleet:
    front, metrics = (f"127.0.0.1:{port}" for port in free_ports(2))
    started = fleet.start(replicas, None, root, store, front, metrics, tracking_uri=uri)
    stack.callback(fleet.stop, root, True)
    return started


def run(quick: bool = False) -> list[dict]:
    repeats, seconds, warmup = (1, 0.5, 0.3) if quick else (REPEATS, SECONDS, WARMUP)
    body = json.dumps(PAYLOADS[MODEL]).encode()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp, ExitStack() as stack:
        store, uri = build_archives(Path(tmp), quick, {"": default_variants()[""]}), champion_registry(quick)
        one = start_fleet(stack, Path(tmp) / "one", 1, store, uri)
        two = None if quick else start_fleet(stack, Path(tmp) / "two", 2, store, uri)  # quick: a smoke test alone
        replica = one.server(one.replicas[0])
        fronts = {name: fleet.front(Path(f.run_dir)) for name, f in (("one", one), ("two", two)) if f}
        for concurrency in QUICK_CONCURRENCY if quick else CONCURRENCY:
            loads = {
                VARIANTS[0]: load_of(f"{replica.inference_url}/predictions/{MODEL}", body, replica.token, concurrency,
                                     "python"),
                VARIANTS[1]: load_of(f"{fronts['one'].inference_url}/predictions/{MODEL}", body, fronts["one"].token,
                                     concurrency, "python"),
            } | ({VARIANTS[2]: load_of(f"{fronts['two'].inference_url}/predictions/{MODEL}", body, fronts["two"].token,
                                       concurrency, "python")} if two else {})  # fmt: skip
            runs = interleaved(loads, repeats, seconds, warmup)
            # The balancer's cost, paired: each round's balancer run against the direct run just before it.
            added = statistics.median(b["p50_ms"] - d["p50_ms"] for d, b in zip(runs[VARIANTS[0]], runs[VARIANTS[1]]))
            for variant, results in runs.items():
                paired = {"added_p50_ms": added} if variant == VARIANTS[1] else {}
                rows.append({"model": MODEL, "variant": variant, "concurrency": concurrency, "repeats": repeats}
                            | median_run(results) | paired)  # fmt: skip
        requests = [(f"/predictions/{name}", json.dumps(payload).encode()) for name, payload in PAYLOADS.items()]
        for fault in faults.FAULTS if two else ():  # test_fleet injects them in the suite
            done = faults.under_fault(two, fault, requests, 64)
            rows.append({
                "fault": fault, "requests": done.outcome.requests, "failed": done.outcome.failed,
                "p99_ms": done.p99_ms, "out_s": done.back - done.hit,
            })  # fmt: skip
    return rows


def section(rows: list[dict]) -> str:
    load = [r for r in rows if "variant" in r]
    fault_rows = [r for r in rows if "fault" in r]
    out = [
        "## 15. The fleet: replicas behind HAProxy",
        "",
        f"`{MODEL}` as shipped (batched), row 3's instance per request, the asyncio load generator. `direct` is the "
        "one-replica fleet's replica on its own address and token; `balancer, 1 replica` the same replica through "
        "HAProxy (the front door checks the fleet's token, a Unix socket per replica sets the replica's own); "
        "`balancer, 2 replicas` a second fleet. Interleaved, each cell the median-throughput run of "
        f"{load[0]['repeats'] if load else REPEATS}. Load generator, HAProxy, TorchServe frontends and workers share "
        "the machine's two cores.",
        "",
        variants_table(load),
    ]
    cell = {(r["variant"], r["concurrency"]): r for r in load}
    top = max(r["concurrency"] for r in load)
    added = cell[(VARIANTS[1], 1)]["added_p50_ms"]
    ratio = cell[(VARIANTS[1], top)]["rps"] / cell[(VARIANTS[0], top)]["rps"]
    two = cell[(VARIANTS[2], top)]["rps"] / cell[(VARIANTS[0], top)]["rps"] if (VARIANTS[2], top) in cell else 0
    out += [
        "",
        f"The balancer's cost at c1 (the median, over the rounds, of its run's p50 less the direct run's just before "
        f"it): {added:+.2f} ms (target ≤ {ADDED_P50_MS} ms) "
        f"{verdict(added <= ADDED_P50_MS)}; "
        f"throughput at c{top} behind it, 1 replica: {ratio:.2f}× direct (target ≥ {THROUGHPUT}×) "
        f"{verdict(ratio >= THROUGHPUT)}; 2 replicas: {two:.2f}× direct (reported: on two cores, two replicas each "
        "batch half the requests while two JVMs and two workers share the cores with the load generator and the "
        "balancer; replicas add capacity on machines of their own).",
        "",
        "Faults on the two-replica fleet, under a steady load of every served kind (the first replica hit; p99 over "
        "the requests that ended while it was out of rotation):",
        "",
        table(
            ["fault", "requests", "failed", "p99 ms", "replica out s"],
            [[r["fault"], r["requests"], r["failed"], r["p99_ms"], r["out_s"]] for r in fault_rows],
        ),
        "",
        f"Failed requests through the faults: {sum(r['failed'] for r in fault_rows)} (target 0) "
        f"{verdict(bool(fault_rows) and all(r['failed'] == 0 for r in fault_rows))}.",
    ]
    return "\n".join(out)
