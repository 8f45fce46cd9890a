"""`handlers/worker_io.py`: TorchServe's own worker protocol reader, through a buffer, reads the same messages
with a handful of system calls instead of one per field."""

import random
import socket
import struct
import threading

import pytest
from ts.protocol import otf_message_handler as otf

from handlers import worker_io
from handlers.worker_io import READ_BYTES, BufferedReads


@pytest.fixture(autouse=True)
def bodies_left_undecoded(monkeypatch):
    monkeypatch.setenv("TS_DECODE_INPUT_REQUEST", "false")  # as the handler sets it in its worker


def field(data: bytes) -> bytes:
    return struct.pack("!i", len(data)) + data


END = struct.pack("!i", -1)


def request(i: int, body: bytes, headers: int = 4) -> bytes:
    """One request of an inference message, as TorchServe's frontend writes it: id, headers, parameters."""
    names = [b"Host", b"Content-Type", b"Authorization", b"Content-Length", b"Inference-Header-Content-Length"]
    frame = field(f"request-{i:04d}".encode())
    for name in names[:headers]:
        frame += field(name) + field(f"value of {name.decode()} for {i}".encode())
    return frame + END + field(b"body") + field(b"application/json") + field(body) + END


def inference(bodies: list[bytes], headers: int = 4) -> bytes:
    return b"I" + b"".join(request(i, body, headers) for i, body in enumerate(bodies)) + END


class CountedSocket:
    """A socket whose recv calls are counted."""

    def __init__(self, sock: socket.socket):
        self.sock, self.calls = sock, 0

    def recv(self, size: int) -> bytes:
        self.calls += 1
        return self.sock.recv(size)


def written(message: bytes, chunks: bool, seed: int = 0) -> tuple[socket.socket, threading.Thread]:
    """The reading end of a socket pair a thread writes `message` into: whole, or in random pieces that cut
    fields apart."""
    reader, writer = socket.socketpair()

    def write() -> None:
        rng, at = random.Random(seed), 0
        while at < len(message):
            size = rng.randint(1, 40) if chunks else len(message)
            writer.sendall(message[at : at + size])
            at += size
        writer.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return reader, thread


BODIES = [b'{"instances": [0.5]}', b'{"inputs": []}', b"x" * (3 * READ_BYTES + 17), b"", b'{"instances": [1]}']


@pytest.mark.parametrize("chunks", [False, True], ids=["whole", "in-pieces"])
def test_buffered_reads_give_the_messages_the_stock_reader_gives(monkeypatch, chunks):
    messages = inference(BODIES) + inference(BODIES[:2], headers=5)
    results = {}
    for reads in ("stock", "buffered"):
        if reads == "buffered":
            monkeypatch.setattr(otf, "_retrieve_buffer", BufferedReads())
        reader, thread = written(messages, chunks)
        results[reads] = [otf.retrieve_msg(reader), otf.retrieve_msg(reader)]
        thread.join()
        reader.close()
    assert results["buffered"] == results["stock"]
    (command, first), (_, second) = results["buffered"]
    assert command == b"I" and [r["parameters"][0]["value"] for r in first] == BODIES
    assert len(second) == 2 and len(second[0]["headers"]) == 5


def test_a_batch_is_read_in_a_few_system_calls_instead_of_one_per_field(monkeypatch):
    batch = inference([b'{"instances": [0.5]}'] * 32)
    calls = {}
    for reads in ("stock", "buffered"):
        if reads == "buffered":
            monkeypatch.setattr(otf, "_retrieve_buffer", BufferedReads())
        reader, thread = written(batch, chunks=False)
        thread.join()  # the whole batch waits in the socket, as at high load
        counted = CountedSocket(reader)
        _, requests = otf.retrieve_msg(counted)
        assert len(requests) == 32
        calls[reads] = counted.calls
        reader.close()
    assert calls["stock"] >= 26 * 32  # id 2, four headers 16, end 1, one parameter 6, end 1: per request
    assert calls["buffered"] <= 2


def test_the_worker_exits_when_its_frontend_goes_away_mid_message(monkeypatch):
    monkeypatch.setattr(otf, "_retrieve_buffer", BufferedReads())
    message = inference(BODIES[:1])
    reader, thread = written(message[: len(message) // 2], chunks=True)
    with pytest.raises(SystemExit) as exited:
        otf.retrieve_msg(reader)
    assert exited.value.code == 0
    thread.join()
    reader.close()


def test_installed_only_on_the_torchserve_it_was_written_for(monkeypatch, caplog):
    monkeypatch.setattr(otf, "_retrieve_buffer", otf._retrieve_buffer)  # restored after the test
    stock = otf._retrieve_buffer
    monkeypatch.setattr(worker_io, "version", lambda package: "0.13.0")
    assert not worker_io.install()
    assert otf._retrieve_buffer is stock and "written for TorchServe 0.12.0, found 0.13.0" in caplog.text
    monkeypatch.undo()
    monkeypatch.setattr(otf, "_retrieve_buffer", otf._retrieve_buffer)
    assert worker_io.install() and isinstance(otf._retrieve_buffer, BufferedReads)
    installed = otf._retrieve_buffer
    assert worker_io.install() and otf._retrieve_buffer is installed  # once per worker, however often asked
