"""Row 14: the Open Inference Protocol against `/predictions` on the same server and the same instance.

nw-sine and mha-adding (row 3's payloads), as shipped (batched), at concurrency 1 and 64: `/predictions` with
`{"instances"}`; `/v2/models/<name>/infer` with JSON tensors and with binary tensors (tritonclient's default: the
JSON header, then the raw little-endian bytes); and gRPC, the protocol's own service (`make serve`'s front,
`training/serving/oip_grpc.py`) with raw contents as tritonclient sends them. Variants interleaved, each cell the
median-throughput run of five. One load generator for
every HTTP variant (the asyncio one: wrk sends no binary body), grpc.aio with one channel for gRPC.
"""

from __future__ import annotations

import asyncio
import functools
import json
import struct
import time
from collections.abc import Callable

from benchmarks.load import interleaved, load_of, median_run, summary
from benchmarks.markdown import verdict
from benchmarks.serving import PAYLOADS, default_variants, served, top_throughput, variants_table

GRPC_SERVICE = "/inference.GRPCInferenceService"  # the protocol's own

CONCURRENCY, QUICK_CONCURRENCY = (1, 64), (1, 16)
REPEATS, SECONDS, WARMUP = 5, 3.0, 1.0
TARGET = 0.9  # OIP REST throughput against /predictions at the top concurrency
VARIANTS = ("/predictions", "OIP REST, JSON", "OIP REST, binary", "OIP gRPC")


def tensors(name: str) -> list[tuple[str, str, list[int], list[float]]]:
    """`name`'s row-3 instance as OIP tensors: (name, datatype, shape, flat values)."""
    (instance,) = PAYLOADS[name]["instances"]
    if name == "nw-sine":
        return [("features", "FP32", [1, 1], [float(instance)])]
    return [("sequences", "FP32", [1, len(instance), len(instance[0])], [float(v) for step in instance for v in step])]


def json_body(name: str) -> bytes:
    inputs = [{"name": n, "datatype": d, "shape": s, "data": v} for n, d, s, v in tensors(name)]
    return json.dumps({"inputs": inputs}).encode()


def binary_body(name: str) -> tuple[bytes, dict]:
    """The binary tensor extension's body and its header, the prediction asked for in binary as tritonclient does."""
    inputs, raw = [], b""
    for tensor, datatype, shape, values in tensors(name):
        data = struct.pack(f"<{len(values)}f", *values)
        inputs.append(
            {"name": tensor, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(data)}}
        )
        raw += data
    header = json.dumps({"inputs": inputs, "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def grpc_load(address: str, name: str, token: Callable[[], str], concurrency: int, seconds: float) -> dict:
    return asyncio.run(async_grpc_load(address, name, token(), concurrency, seconds))


async def async_grpc_load(address: str, name: str, token: str, concurrency: int, seconds: float) -> dict:
    import grpc
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=name)
    for tensor, datatype, shape, values in tensors(name):
        request.inputs.add(name=tensor, datatype=datatype, shape=shape)
        request.raw_input_contents.append(struct.pack(f"<{len(values)}f", *values))
    latencies: list[float] = []
    errors = [0]
    async with grpc.aio.insecure_channel(address) as channel:
        infer = channel.unary_unary(
            f"{GRPC_SERVICE}/ModelInfer",
            request_serializer=service_pb2.ModelInferRequest.SerializeToString,
            response_deserializer=service_pb2.ModelInferResponse.FromString,
        )
        deadline = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                try:
                    answer = await infer(request, metadata=(("authorization", f"Bearer {token}"),), timeout=30)
                    errors[0] += not answer.raw_output_contents
                except grpc.aio.AioRpcError:
                    errors[0] += 1
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(caller() for _ in range(concurrency)))
    return summary("grpc.aio", latencies, errors[0], time.perf_counter() - start)


def run(quick: bool = False) -> list[dict]:
    repeats, seconds, warmup = (1, 0.5, 0.3) if quick else (REPEATS, SECONDS, WARMUP)
    rows = []
    with served(quick, {"": default_variants()[""]}) as server:
        for name, payload in PAYLOADS.items():
            oip_url, (binary, headers) = f"{server.inference_url}/v2/models/{name}/infer", binary_body(name)
            for concurrency in QUICK_CONCURRENCY if quick else CONCURRENCY:
                http = functools.partial(load_of, token=server.token, concurrency=concurrency, client="python")
                measures = {  # every HTTP variant with one load generator: wrk sends no binary body
                    "/predictions": http(f"{server.inference_url}/predictions/{name}", json.dumps(payload).encode()),
                    "OIP REST, JSON": http(oip_url, json_body(name)),
                    "OIP REST, binary": http(oip_url, binary, headers=headers),
                    "OIP gRPC": functools.partial(grpc_load, server.grpc_address, name, server.token, concurrency),
                }
                for variant, results in interleaved(measures, repeats, seconds, warmup).items():
                    row = {"model": name, "variant": variant, "concurrency": concurrency, "repeats": repeats}
                    rows.append(row | median_run(results))
    return rows


def section(rows: list[dict]) -> str:
    out = [
        "## 14. The Open Inference Protocol against /predictions",
        "",
        "One server, the champions as shipped (batched), row 3's instance per request: `/predictions` with "
        '`{"instances"}`, `/v2/models/<name>/infer` with JSON tensors and with binary ones (the binary tensor '
        "extension, tritonclient's default), and gRPC (the protocol's own service, raw contents: the Python front "
        "`make serve` starts, which passes each call to the binary REST route). The "
        "asyncio load generator for every HTTP variant (wrk sends no binary body), grpc.aio for gRPC; variants "
        "interleaved, each cell the median-throughput run of "
        f"{rows[0]['repeats'] if rows else REPEATS}.",
        "",
        variants_table(rows),
    ]
    top, cells = top_throughput(rows)
    for model, cell in cells.items():
        ratios = {v: cell[v] / cell["/predictions"] for v in VARIANTS[1:]}
        out += [
            "",
            f"`{model}` at c{top}, against /predictions: OIP REST JSON {ratios['OIP REST, JSON']:.2f}×, binary "
            f"{ratios['OIP REST, binary']:.2f}× (target ≥ {TARGET}×) "
            f"{verdict(min(ratios['OIP REST, JSON'], ratios['OIP REST, binary']) >= TARGET)}; gRPC "
            f"{ratios['OIP gRPC']:.2f}× (reported).",
        ]
    return "\n".join(out)
