"""A steady load that runs beside something else (a fault, a rollout) and counts every answer it got.

`SteadyLoad` keeps `concurrency` keep-alive connections busy on loopback, each sending the given requests in turn
(several models at once), until stopped. Unlike a benchmark's load it never gives up: a connection that fails or
closes is a failed request and a new connection; every answer's status is counted, and each request's end time and
latency are kept so the p99 of any window (the fault's) can be read afterwards.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

FAILED = "no answer"  # a request that got no HTTP answer: refused, reset, closed
VERSION = re.compile(r'"version": ?"([^"]+)"')  # the serving contract's model version in an answer


@dataclass
class Outcome:
    statuses: Counter = field(default_factory=Counter)  # status (or FAILED) -> count
    samples: list[tuple[float, float, object]] = field(default_factory=list)  # (end, latency s, status)
    failures: list[str] = field(default_factory=list)  # the first few failed answers, for the test's message
    versions: list[tuple[float, str]] = field(default_factory=list)  # (end, model version) of the watched path

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != 200)

    def p99_ms(self, start: float = 0.0, end: float = float("inf")) -> float:
        window = sorted(latency for t, latency, _ in self.samples if start <= t <= end)
        return 1e3 * window[min(len(window) - 1, int(0.99 * len(window)))] if window else float("nan")


class SteadyLoad:
    """`with SteadyLoad(url, token, requests, 64) as load: ...`; then `load.outcome`. `requests` are
    (path, JSON body bytes) pairs, sent in turn by each connection."""

    def __init__(
        self, url: str, token: str, requests: list[tuple[str, bytes]], concurrency: int, watch: str | None = None
    ):
        parts = urlsplit(url)
        if parts.hostname not in ("127.0.0.1", "localhost"):
            raise ValueError(f"steady loads target loopback only, not {parts.hostname}")
        self.host, self.port, self.concurrency = parts.hostname, parts.port, concurrency
        self.raw = [
            (
                f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
            for path, body in requests
        ]
        self.watched = {i for i, (path, _) in enumerate(requests) if path == watch}  # answers' versions kept
        self.outcome = Outcome()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self.run()), daemon=True)

    def __enter__(self) -> SteadyLoad:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join(timeout=120)

    async def run(self) -> None:
        await asyncio.gather(*(self.connection(i) for i in range(self.concurrency)))

    async def connection(self, index: int) -> None:
        turn = index
        while not self.stopping.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as error:
                self.count(FAILED, 0.0, f"connect: {error}")
                await asyncio.sleep(0.05)
                continue
            try:
                while not self.stopping.is_set():
                    turn += 1
                    start = time.perf_counter()
                    status, body, closing = await exchange(reader, writer, self.raw[turn % len(self.raw)])
                    self.count(status, time.perf_counter() - start, body)
                    if status == 200 and turn % len(self.raw) in self.watched:
                        self.outcome.versions.append((time.monotonic(), VERSION.search(body).group(1)))
                    if closing:  # answered, then closed: a new connection for the next request
                        break
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as error:
                self.count(FAILED, time.perf_counter() - start, f"{type(error).__name__}: {error}")
            finally:
                writer.close()

    def count(self, status: object, latency: float, detail: str) -> None:
        self.outcome.statuses[status] += 1
        self.outcome.samples.append((time.monotonic(), latency, status))
        if status != 200 and len(self.outcome.failures) < 5:
            self.outcome.failures.append(f"{status}: {detail[:200]}")


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, str, bool]:
    """Send one request on a keep-alive connection: its status, its body and whether the server closes the
    connection after it."""
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length, closing = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
        closing |= name.strip().lower() == "connection" and value.strip().lower() == "close"
    body = await reader.readexactly(length)
    return status, body.decode(errors="replace"), closing
