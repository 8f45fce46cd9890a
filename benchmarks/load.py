"""Load generators for loopback HTTP: wrk when installed, else a keep-alive asyncio client.

Both send the same POST for a fixed time from `concurrency` connections and report throughput,
p50/p99 latency and the count of non-200 answers. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit


def interleaved(
    loads: dict[str, Callable[[float], dict]], repeats: int, seconds: float, warmup: float
) -> dict[str, list[dict]]:
    """Each load (a run for the seconds given) warmed up once, then `repeats` rounds of every load in turn, so a
    drift of the machine falls on all of them: each load's runs."""
    for load in loads.values():
        load(warmup)
    runs: dict[str, list[dict]] = {name: [] for name in loads}
    for _ in range(repeats):
        for name, load in loads.items():
            runs[name].append(load(seconds))
    return runs


def load_of(
    url: str, body: bytes, token: Callable[[], str], concurrency: int, client: str, headers: dict | None = None
) -> Callable[[float], dict]:
    """A load `interleaved` can run for the seconds it gives (the token read afresh each run)."""
    return lambda seconds: run_load(url, body, token(), concurrency, seconds, client, headers)


def median_run(runs: list[dict]) -> dict:
    """The run of median throughput (a cell's figures all come from one run)."""
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def run_load(
    url: str,
    body: bytes,
    token: str,
    concurrency: int,
    seconds: float,
    client: str = "auto",
    headers: dict | None = None,
) -> dict:
    """`client`: "auto" (wrk when installed), "wrk" or "python"; `headers` beside the token and a JSON
    Content-Type (the python client alone sends them, and any body: a binary one too)."""
    host = urlsplit(url).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"load tests target loopback only, not {host}")
    if not headers and (client == "wrk" or (client == "auto" and shutil.which("wrk"))):
        return wrk(url, body, token, concurrency, seconds)
    return asyncio.run(async_load(url, body, token, concurrency, seconds, headers))


async def async_load(
    url: str, body: bytes, token: str, concurrency: int, seconds: float, headers: dict | None = None
) -> dict:
    parts = urlsplit(url)
    fields = {"Content-Type": "application/json", **(headers or {}), "Authorization": f"Bearer {token}"}
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in fields.items())
        + f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    latencies: list[float] = []
    errors = [0]
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                writer.write(request)
                await writer.drain()
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - start)
                errors[0] += status != 200
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return summary("python-asyncio", latencies, errors[0], time.perf_counter() - start)


def summary(client: str, latencies: list[float], errors: int, elapsed: float) -> dict:
    """A load run's figures from each answered request's latency (seconds)."""
    ordered = sorted(latencies)
    return {
        "client": client,
        "requests": len(latencies),
        "rps": len(latencies) / elapsed,
        "p50_ms": 1e3 * statistics.median(ordered) if ordered else float("nan"),
        "p99_ms": 1e3 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan"),
        "errors": errors,
    }


def wrk(url: str, body: bytes, token: str, concurrency: int, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "post.lua"
        escaped = body.decode().replace("\\", "\\\\").replace('"', '\\"')
        script.write_text(
            'wrk.method = "POST"\n'
            f'wrk.body = "{escaped}"\n'
            'wrk.headers["Content-Type"] = "application/json"\n'
            f'wrk.headers["Authorization"] = "Bearer {token}"\n'
        )
        command = [
            "wrk",
            f"-t{min(2, concurrency)}",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--latency",
            "-s",
            str(script),
            url,
        ]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "client": "wrk",
        "requests": total,
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": wrk_ms(re.search(r"50%\s+([\d.]+\w+)", out).group(1)),
        "p99_ms": wrk_ms(re.search(r"99%\s+([\d.]+\w+)", out).group(1)),
        "errors": (int(non_2xx.group(1)) if non_2xx else 0)
        + (sum(int(g) for g in socket_errors.groups()) if socket_errors else 0),
    }


def wrk_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]
