"""The Open Inference Protocol's gRPC service (`inference.GRPCInferenceService`: what tritonclient's and KServe's gRPC
clients call), answered by passing each call to the REST route that answers it.

TorchServe 0.12 serves the protocol's messages under a package name of its own, drops `raw_input_contents` (what
tritonclient sends) and the outputs a request names, and cannot refuse with a gRPC status (docs/http-api.md). This
front serves the protocol's own service on loopback and holds no secret: the client's `authorization` metadata goes
as the request's header and the server behind checks it. Inputs go as the binary tensor extension (raw contents as
they are, typed contents packed into the same bytes), every output is asked for in binary and comes back as raw
contents, and an HTTP refusal comes back as the matching gRPC status with the server's own words.

Behind a single TorchServe (`make serve`), the routes TorchServe lacks (model metadata, readiness, a version) are
asked of the model's handler on its infer route with the `X-OIP-*` headers (`handlers/oip.py`); behind a fleet's
front door, by the protocol's REST routes, which the front door rewrites the same way (`balancer.py`).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import signal
import struct
import subprocess
import sys
import threading
import urllib.parse
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from training.infra.places import LOOPBACK, ROOT
from training.infra.processes import pid_alive, port_is_free, start_group, stop_tree, wait_until, without_credentials
from training.serving.errors import StartupError

PID_FILE, LOG_FILE = "oip-grpc.pid", "oip-grpc.log"  # in the run directory; the log under its logs/
HEADER = "Inference-Header-Content-Length"
MESSAGE_BYTES = 16_000_000  # TorchServe's own cap on a request (config.properties max_request_size)
TIMEOUT_S = 60  # config.properties default_response_timeout
# Calls in flight at once: each holds a thread while the server behind answers (a batch's wait, milliseconds), so
# this, not the CPU, bounds the front's throughput; idle threads cost only memory.
THREADS = 128
FORMATS = {"BOOL": "?", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B", "UINT16": "H"}
FORMATS |= {"UINT32": "I", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d"}
# a typed tensor's contents field per datatype (the protocol's InferTensorContents)
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents"}
CONTENTS |= {"INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents"}
CONTENTS |= {"UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents"}
CONTENTS |= {"FP64": "fp64_contents", "BYTES": "bytes_contents"}
TOKEN_REFUSED = "Token Authorization failed"  # TorchServe 0.12's words
CODES = {  # an HTTP refusal's status as the gRPC status a client of the protocol expects
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


class Refused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Upstream:
    """The REST side: `url` (http://host:port on loopback); `front_door`: a fleet's balancer, which has the
    protocol's REST routes, else a TorchServe, whose handler answers them from headers."""

    url: str
    front_door: bool = False

    def route(self, name: str, version: str, what: str) -> tuple[str, str, dict[str, str]]:
        """(method, path, headers) of the model route `what` ("infer", "metadata", "ready") of `name`'s `version`."""
        model = f"/v2/models/{urllib.parse.quote(name, safe='')}"
        versioned = f"{model}/versions/{urllib.parse.quote(version, safe='')}" if version else model
        if self.front_door:
            if what == "infer":
                return "POST", f"{versioned}/infer", {}
            return "GET", versioned + ("/ready" if what == "ready" else ""), {}
        headers = {"X-OIP-Version": version} if version else {}
        if what != "infer":
            headers["X-OIP-Route"] = what
        return "POST", f"{model}/infer", headers


class Connections(threading.local):
    """One kept-alive connection to the REST side per serving thread."""

    def __init__(self, upstream: Upstream) -> None:
        self.upstream, self.connection = upstream, None

    def send(self, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> tuple[int, dict, bytes]:
        for attempt in (1, 2):  # a kept-alive connection the server closed meanwhile: once more on a new one
            if self.connection is None:
                parsed = urllib.parse.urlsplit(self.upstream.url)
                self.connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=TIMEOUT_S)
            try:
                self.connection.request(method, path, body=body, headers=headers)
                response = self.connection.getresponse()
                return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
            except (OSError, http.client.HTTPException) as error:
                self.connection.close()
                self.connection = None
                if attempt == 2 or not isinstance(error, (http.client.RemoteDisconnected, BrokenPipeError)):
                    raise Refused(grpc.StatusCode.UNAVAILABLE, f"the server behind is not answering: {error}") from None
        raise AssertionError("unreachable")


def refusal(status: int, body: bytes) -> Refused:
    try:
        answer = json.loads(body)
        words = answer.get("error", "") if isinstance(answer, dict) else ""
        detail = answer.get("detail") or answer.get("message") if isinstance(answer, dict) else None
        message = ": ".join(str(part) for part in (words, detail) if part) or body.decode(errors="replace")
    except ValueError:
        message = body.decode(errors="replace")
    code = CODES.get(status, grpc.StatusCode.INTERNAL)
    if status == 400 and TOKEN_REFUSED in message:  # TorchServe refuses a missing or wrong token with a 400
        code = grpc.StatusCode.UNAUTHENTICATED
    return Refused(code, message[:1000] or f"HTTP {status}")


# tensors


def packed(values: list, datatype: str) -> bytes:
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in values]
        return b"".join(struct.pack("<I", len(item)) + item for item in items)
    return struct.pack(f"<{len(values)}{FORMATS[datatype]}", *values)


def infer_body(request: service_pb2.ModelInferRequest) -> tuple[bytes, str]:
    """The request as the binary tensor extension's body: (bytes, its JSON header's length)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        detail = f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs"
        raise Refused(grpc.StatusCode.INVALID_ARGUMENT, detail)
    inputs, blobs = [], []
    for i, tensor in enumerate(request.inputs):
        if raw:
            blob = raw[i]
        elif tensor.datatype in CONTENTS:
            blob = packed(list(getattr(tensor.contents, CONTENTS[tensor.datatype])), tensor.datatype)
        else:
            raise Refused(grpc.StatusCode.INVALID_ARGUMENT, f"input '{tensor.name}' has datatype {tensor.datatype!r}")
        inputs.append({"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)})
        inputs[-1]["parameters"] = {"binary_data_size": len(blob)}
        blobs.append(blob)
    header: dict = {"inputs": inputs, "parameters": {"binary_data_output": True}}
    if request.id:
        header["id"] = request.id
    if request.outputs:
        header["outputs"] = [{"name": o.name, "parameters": {"binary_data": True}} for o in request.outputs]
    text = json.dumps(header).encode()
    return text + b"".join(blobs), str(len(text))


def infer_response(headers: dict, body: bytes) -> service_pb2.ModelInferResponse:
    """A binary-extension answer as the protocol's gRPC answer, every output in `raw_output_contents`."""
    length = int(headers.get(HEADER.lower(), len(body)))
    answer, offset = json.loads(body[:length]), length
    response = service_pb2.ModelInferResponse(
        model_name=answer.get("model_name", ""), model_version=answer.get("model_version", ""), id=answer.get("id", "")
    )
    for output in answer.get("outputs", []):
        tensor = response.outputs.add(name=output["name"], datatype=output["datatype"], shape=output["shape"])
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is None:
            response.raw_output_contents.append(packed(output["data"], tensor.datatype))
        else:
            response.raw_output_contents.append(body[offset : offset + size])
            offset += size
    return response


# the service


def answered(handler):
    """A method whose refusal becomes its gRPC status and message."""

    @functools.wraps(handler)
    def method(self, request, context):
        try:
            return handler(self, request, context)
        except Refused as refused:
            context.abort(refused.code, refused.message)

    return method


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, upstream: Upstream) -> None:
        self.upstream, self.connections = upstream, Connections(upstream)

    def call(self, context, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        token = dict(context.invocation_metadata()).get("authorization")
        sent = ({"Authorization": token} if token else {}) | (headers or {})
        status, answer_headers, answer = self.connections.send(method, path, body, sent)
        if status != 200:
            raise refusal(status, answer)
        return answer_headers, answer

    def model(self, context, name: str, version: str, what: str, body: bytes | None = None, headers=None):
        method, path, extra = self.upstream.route(name, version, what)
        return self.call(context, method, path, body, extra | (headers or {}))

    @answered
    def ServerLive(self, request, context):
        self.call(context, "GET", "/v2/health/live")
        return service_pb2.ServerLiveResponse(live=True)

    @answered
    def ServerReady(self, request, context):
        self.call(context, "GET", "/v2/health/ready")
        return service_pb2.ServerReadyResponse(ready=True)

    @answered
    def ServerMetadata(self, request, context):
        meta = json.loads(self.call(context, "GET", "/v2")[1])
        return service_pb2.ServerMetadataResponse(
            name=meta.get("name", ""), version=meta.get("version", ""), extensions=meta.get("extensions", [])
        )

    @answered
    def ModelReady(self, request, context):
        answer = json.loads(self.model(context, request.name, request.version, "ready")[1])
        return service_pb2.ModelReadyResponse(ready=bool(answer.get("ready")))

    @answered
    def ModelMetadata(self, request, context):
        meta = json.loads(self.model(context, request.name, request.version, "metadata")[1])
        tensor = service_pb2.ModelMetadataResponse.TensorMetadata
        return service_pb2.ModelMetadataResponse(
            name=meta["name"],
            versions=meta["versions"],
            platform=meta.get("platform", ""),
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]],
        )

    def infer(self, request, context):
        body, length = infer_body(request)
        headers = {"Content-Type": "application/octet-stream", HEADER: length}
        answer_headers, answer = self.model(context, request.model_name, request.model_version, "infer", body, headers)
        return infer_response(answer_headers, answer)

    ModelInfer = answered(infer)

    def ModelStreamInfer(self, request_iterator, context):
        """Each request of the stream answered in turn; a refused one answers its error and the stream goes on."""
        for request in request_iterator:
            try:
                response = self.infer(request, context)
                yield service_pb2.ModelStreamInferResponse(infer_response=response)
            except Refused as refused:
                yield service_pb2.ModelStreamInferResponse(error_message=f"{refused.code.name}: {refused.message}")


def serve(listen: str, upstream: Upstream, threads: int = THREADS) -> grpc.Server:
    """The protocol's gRPC service on `listen` (host:port, loopback only), started."""
    host = listen.rsplit(":", 1)[0]
    if host != LOOPBACK:
        raise ValueError(f"the gRPC front listens on {LOOPBACK} only (it has no TLS of its own), not {host}")
    options = [("grpc.max_receive_message_length", MESSAGE_BYTES), ("grpc.max_send_message_length", MESSAGE_BYTES)]
    server = grpc.server(futures.ThreadPoolExecutor(threads), options=options)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(upstream), server)
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"the gRPC front cannot listen on {listen}")
    server.start()
    return server


# the process: started and stopped with its server


def launch(run_dir: Path, listen: str, upstream: Upstream) -> subprocess.Popen:
    """Start the front in a process of its own (it listens within a second or two: `wait_listening`)."""
    command = [sys.executable, "-m", "training.serving.oip_grpc", "--listen", listen, "--upstream", upstream.url]
    command += ["--front-door"] * upstream.front_door
    (run_dir / "logs").mkdir(mode=0o700, exist_ok=True)
    with open(run_dir / "logs" / LOG_FILE, "ab") as log:
        process = start_group(command, log, env=without_credentials(os.environ), cwd=ROOT, umask=0o077)
    (run_dir / PID_FILE).write_text(str(process.pid))
    return process


def wait_listening(run_dir: Path, process: subprocess.Popen, listen: str, timeout: float = 60) -> None:
    def check() -> None:
        if process.poll() is not None:
            log = (run_dir / "logs" / LOG_FILE).read_text(errors="replace").strip().splitlines() or ["no output"]
            raise StartupError(f"the gRPC front on {listen} stopped during start-up: {log[-1][:300]}")

    if not wait_until(lambda: not port_is_free(int(listen.rsplit(":", 1)[1])), timeout, interval=0.1, check=check):
        raise StartupError(f"the gRPC front did not listen on {listen} within {timeout:.0f}s")


def start(run_dir: Path, listen: str, upstream: Upstream) -> None:
    """Start the front and return once it listens."""
    wait_listening(run_dir, launch(run_dir, listen, upstream), listen)


def running(run_dir: Path) -> bool:
    pid_file = Path(run_dir) / PID_FILE
    return pid_file.exists() and pid_alive(int(pid_file.read_text()))


def stop(run_dir: Path) -> None:
    pid_file = Path(run_dir) / PID_FILE
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if pid_alive(pid):
            stop_tree(pid, timeout=10)
        pid_file.unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port (loopback)")
    parser.add_argument("--upstream", required=True, help="the REST side, http://127.0.0.1:port")
    parser.add_argument("--front-door", action="store_true", help="the upstream is a fleet's balancer")
    parser.add_argument("--threads", type=int, default=THREADS, help="calls served at once")
    arguments = parser.parse_args()
    server = serve(arguments.listen, Upstream(arguments.upstream, arguments.front_door), arguments.threads)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    stopped.wait()
    server.stop(grace=5).wait()


if __name__ == "__main__":
    main()
