"""Row 3: TorchServe throughput and latency for nw-sine and mha-adding at several concurrencies,
with and without dynamic batching, against a bare baseline handler on the same server."""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import optuna

from benchmarks.common import ROOT
from benchmarks.load import interleaved, load_of, median_run
from benchmarks.markdown import table, verdict
from training.data.datasets import LOADERS, load_adding
from training.search.options import TuneOptions
from training.search.study import tune
from training.serving import serve
from training.serving.archive import MODEL_CONFIG, archive_champion
from training.serving.serve import free_ports
from training.tracking import mlflow_store

CONCURRENCY = [1, 16, 64]
ADDING_SEQUENCE = [[round((i * 37 % 100) / 100, 2), float(i in (5, 30))] for i in range(50)]
PAYLOADS = {"nw-sine": {"instances": [2.5]}, "mha-adding": {"instances": [ADDING_SEQUENCE]}}
VARIANTS = {  # archive suffix -> (handler, batch size, the handler's options)
    "": (ROOT / "handlers" / "attention_handler.py", MODEL_CONFIG["batchSize"], {}),
    "-unbatched": (ROOT / "handlers" / "attention_handler.py", 1, {}),
    "-baseline": (ROOT / "benchmarks" / "baseline_handler.py", MODEL_CONFIG["batchSize"], {}),
    # the worker's own reads, field by field (handlers/worker_io.py): what the handler costs beside the baseline's
    "-unbuffered": (ROOT / "handlers" / "attention_handler.py", MODEL_CONFIG["batchSize"], {"buffered_reads": False}),
}


GIVEN_CHAMPIONS = "ATTENTION_BENCH_CHAMPIONS"  # `--champions`: a registry whose champions the serving rows serve


@functools.cache
def champion_registry(quick: bool) -> str:
    """Champions of nw-sine and mha-adding, tuned once per benchmark process in private stores, or the registry
    `--champions` named (tuned as this run tunes them): the tracking URI."""
    if os.environ.get(GIVEN_CHAMPIONS):
        return os.environ[GIVEN_CHAMPIONS]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="bench-champions-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    stores = dict(
        storage=f"sqlite:///{root / 'optuna.db'}", tracking_uri=f"sqlite:///{root / 'mlflow.db'}", progress=False
    )
    tune(TuneOptions(model="nw", dataset="sine", trials=2 if quick else 20, **stores))
    with smaller_adding(quick):
        tune(TuneOptions(model="mha", dataset="adding", trials=1, epochs=1 if quick else 3, **stores))
    return stores["tracking_uri"]


def smaller_adding(quick: bool) -> AbstractContextManager:
    """A smoke run's `adding`: smaller (same generator and lengths), trained in seconds and tested again on the same."""
    small = functools.partial(load_adding, n_train=300, n_val=100, n_test=100)
    return mock.patch.dict(LOADERS, {"adding": small}) if quick else nullcontext()


@functools.cache
def throwaway_keys() -> Path:
    """The folder of this process's signing key, made for it and removed with it: benchmark archives (a bare handler
    without request limits among them) are signed and trusted with it, never with the production key, which this
    process then does not trust either."""
    folder = Path(tempfile.mkdtemp(prefix="bench-keys-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["ATTENTION_SERVE_KEYS"] = str(folder)
    return folder


def build_archives(root: Path, quick: bool, variants: dict[str, dict] | None = None) -> Path:
    """The champions packed in each variant under root/archives (suffix -> handler path, the handler's options
    ("handler_options") and model-config overrides; default: the three variants of this row), signed with
    `throwaway_keys()`."""
    throwaway_keys()
    client = mlflow_store.configure(champion_registry(quick))
    model_store = root / "archives"
    variants = variants or default_variants()
    for name in PAYLOADS:
        for suffix, overrides in variants.items():
            handler = overrides.get("handler", VARIANTS[""][0])
            options = {**MODEL_CONFIG["handler"], **overrides.get("handler_options", {})}  # the handler's own settings
            rest = {k: v for k, v in overrides.items() if k not in ("handler", "handler_options")}
            config = {**MODEL_CONFIG, **rest, "handler": options}
            with smaller_adding(quick):
                archive_champion(client, name, model_store, config, archive_name=name + suffix, handler=handler)
    return model_store


def default_variants() -> dict[str, dict]:
    return {
        suffix: {"handler": handler, "batchSize": size, "handler_options": options}
        for suffix, (handler, size, options) in VARIANTS.items()
    }


@contextmanager
def served(quick: bool, variants: dict[str, dict] | None = None) -> Iterator[serve.Server]:
    """A private TorchServe on free loopback ports serving the champions in each variant (`build_archives`), all of
    it in a temporary folder: the server is stopped (its whole process tree) and the folder removed however the
    body ends. A quick run (a smoke test) serves every row's variants from one server, started once."""
    variants = variants or default_variants()
    if quick:
        server, shared = quick_server()
        unknown = set(variants) - set(shared)  # a suffix names one configuration in every row ("": as shipped)
        assert not unknown, f"variants {sorted(unknown)} are not among the quick run's shared ones"
        yield server
        return
    with tempfile.TemporaryDirectory(prefix="bench-served-") as tmp:
        store = build_archives(Path(tmp), quick, variants)
        uri = champion_registry(quick)
        server = serve.start(
            run_dir=Path(tmp) / "run", model_store=store, ports=free_ports(), quiet=True, tracking_uri=uri
        )
        try:
            yield server
        finally:
            serve.stop(server.run_dir, quiet=True)


@functools.cache
def quick_server() -> tuple[serve.Server, dict[str, dict]]:
    """One server for a quick run's serving rows (each of their variants once), stopped when the process ends."""
    from benchmarks import serving_ops  # the other serving rows' variants; that module imports this one

    shared = default_variants() | serving_ops.quick_variants()
    root = Path(tempfile.mkdtemp(prefix="bench-served-quick-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    store = build_archives(root, True, shared)
    uri = champion_registry(True)
    server = serve.start(run_dir=root / "run", model_store=store, ports=free_ports(), quiet=True, tracking_uri=uri)
    atexit.register(serve.stop, server.run_dir, quiet=True)  # registered last: runs before the folder goes
    return server, shared


def run(quick: bool = False, client: str = "auto") -> list[dict]:
    """Variants are interleaved and each cell repeated; a cell reports its median-throughput run."""
    seconds, repeats, warmup = (0.5, 1, 0.3) if quick else (3.0, 3, 1.0)
    concurrency = [1, 16] if quick else CONCURRENCY
    rows = []
    with served(quick) as server:
        for name, payload in PAYLOADS.items():
            body = json.dumps(payload).encode()
            urls = {suffix: f"{server.inference_url}/predictions/{name}{suffix}" for suffix in VARIANTS}
            for c in concurrency:
                loads = {suffix: load_of(url, body, server.token, c, client) for suffix, url in urls.items()}
                for suffix, results in interleaved(loads, repeats, seconds, warmup).items():
                    median = median_run(results)
                    rows.append(
                        {
                            "model": name,
                            "variant": VARIANTS_LABEL[suffix],
                            "concurrency": c,
                            "repeats": len(results),
                            **median,
                        }
                    )
    return rows


VARIANTS_LABEL = {
    "": "ours, batched",
    "-unbatched": "ours, unbatched",
    "-baseline": "bare baseline, batched",
    "-unbuffered": "ours, batched, reads unbuffered",
}


def section(rows: list[dict]) -> str:
    client = rows[0]["client"] if rows else "?"
    out = [
        "## 3. Serving: TorchServe on loopback",
        "",
        f"Load generator: {client}; each cell a fixed-time run after a warm-up. Variants: our handler with "
        f"dynamic batching (`batchSize` {MODEL_CONFIG['batchSize']}, `maxBatchDelay` "
        f"{MODEL_CONFIG['maxBatchDelay']} ms), our handler unbatched (`batchSize` 1), a "
        "bare baseline handler (same checkpoint and server config, no validation or metadata), and our handler "
        "batched with its worker reading requests field by field as TorchServe's own worker does (`buffered_reads: "
        "false`; shipped: through a buffer, `handlers/worker_io.py`), which the baseline does too. Load generator, "
        "TorchServe frontend and workers share the machine's cores.",
        "",
    ]
    out.append(variants_table(rows))
    top, cells = top_throughput(rows)
    for model, cell in cells.items():
        vs_base = cell["ours, batched"] / cell["bare baseline, batched"]
        vs_unbatched = cell["ours, batched"] / cell["ours, unbatched"]
        unbuffered = cell.get("ours, batched, reads unbuffered")
        alike = ""
        if unbuffered:
            ratio = unbuffered / cell["bare baseline, batched"]
            alike = f" (the worker's reads unbuffered, as the baseline's: {ratio:.2f}×)"
        out += [
            "",
            f"`{model}` at c{top}: ours / baseline = {vs_base:.2f}× (target ≥ 0.9×) {verdict(vs_base >= 0.9)}"
            f"{alike}; batched / unbatched = {vs_unbatched:.1f}× (target ≥ 5×) "
            f"{verdict(vs_unbatched >= 5)}.",
        ]
    return "\n".join(out)


def variants_table(rows: list[dict]) -> str:
    """A serving row's cells: model, variant, concurrency, throughput, latency and errors."""
    return table(
        ["model", "variant", "concurrency", "req/s", "p50 ms", "p99 ms", "errors"],
        [[r["model"], r["variant"], r["concurrency"], r["rps"], r["p50_ms"], r["p99_ms"], r["errors"]] for r in rows],
    )


def top_throughput(rows: list[dict]) -> tuple[int, dict[str, dict[str, float]]]:
    """The highest concurrency measured, and each model's throughput by variant there (what the verdicts read)."""
    top = max(r["concurrency"] for r in rows)
    models = dict.fromkeys(r["model"] for r in rows)
    return top, {
        m: {r["variant"]: r["rps"] for r in rows if r["model"] == m and r["concurrency"] == top} for m in models
    }
