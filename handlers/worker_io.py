"""The TorchServe worker's reads from its frontend, through a buffer.

TorchServe 0.12's Python worker reads each field of each request with a `recv` of its own
(`ts/protocol/otf_message_handler.py`, `_retrieve_buffer`): a one-row request with four HTTP headers costs 26
system calls, and each header sent adds four. Reading a batch of 32 such requests from a socket pair takes ~30 µs
a request that way and ~10 µs through a buffer, where a worker spends ~80 µs a request in all at high load
(benchmark row 3 serves the handler both ways; `tests/test_worker_io.py` counts the calls). TorchServe is
archived at 0.12.0 and no fix will come, so the handler replaces that one function, in its own worker, with
`BufferedReads`: one `recv` takes whatever the socket holds (up to 64 KiB, or the field's length when larger)
and fields are cut from it. The frames, their order, the bytes each call returns and the worker's exit when its
frontend goes away are unchanged; the function is replaced only on the TorchServe version it was read from
(`install`), and the handler option `buffered_reads: false` leaves it alone.
"""

from __future__ import annotations

import logging
import sys
import weakref
from importlib.metadata import PackageNotFoundError, version
from typing import Any

logger = logging.getLogger(__name__)

READ_BYTES = 1 << 16  # what one recv asks for, at least
WRITTEN_FOR = "0.12.0"  # the TorchServe whose worker protocol this was read from


class BufferedReads:
    """`_retrieve_buffer(conn, length)`: the next `length` bytes from `conn` as a bytearray, read through a buffer
    kept per socket."""

    def __init__(self) -> None:
        self.buffers: weakref.WeakKeyDictionary[Any, Buffer] = weakref.WeakKeyDictionary()

    def __call__(self, conn: Any, length: int) -> bytearray:
        buffer = self.buffers.get(conn)
        if buffer is None:
            buffer = self.buffers[conn] = Buffer()
        return buffer.take(conn, length)


class Buffer:
    __slots__ = ("data", "start")

    def __init__(self) -> None:
        self.data, self.start = bytearray(), 0

    def take(self, conn: Any, length: int) -> bytearray:
        end = self.start + length
        while len(self.data) < end:
            del self.data[: self.start]  # what was handed out already
            self.start, end = 0, length
            packet = conn.recv(max(READ_BYTES, length - len(self.data)))
            if not packet:  # as TorchServe's own reader: the frontend is gone, and so is this worker
                logging.info("Frontend disconnected.")
                sys.exit(0)
            self.data += packet
        field = self.data[self.start : end]
        self.start = end
        return field


def install() -> bool:
    """Buffered reads in this worker from its next message on (the message being handled was read whole, so
    nothing is left half-read); False, with a warning, on another TorchServe than the one this was written for."""
    from ts.protocol import otf_message_handler

    try:
        installed = version("torchserve")
    except PackageNotFoundError:
        installed = "none"
    if installed != WRITTEN_FOR or not callable(getattr(otf_message_handler, "_retrieve_buffer", None)):
        logger.warning("worker reads left unbuffered: written for TorchServe %s, found %s", WRITTEN_FOR, installed)
        return False
    if not isinstance(otf_message_handler._retrieve_buffer, BufferedReads):
        otf_message_handler._retrieve_buffer = BufferedReads()
    return True
