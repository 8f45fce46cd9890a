"""A client for a TorchServe started by `training.serving.serve`: tokens, requests, health, models and workers.

It reads everything it needs from the server's run directory: the resolved `config.properties` (addresses)
and `key_file.json` (TorchServe's tokens, a secret that expires).
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from training.serving.errors import ServingError

# TorchServe 0.12 serves the Open Inference Protocol's gRPC service under its own package name, not the protocol's
# `inference.GRPCInferenceService` (docs/http-api.md): the path of its methods.
OIP_GRPC_SERVICE = "/org.pytorch.serve.grpc.openinference.GRPCInferenceService"
CA_FILE = "ca.crt"  # in a TLS server's run directory: the CA its certificate is verified against


class TokenExpiredError(ServingError):
    """The token in key_file.json has expired; ask for a fresh one with `python -m training token --refresh`."""


@dataclass
class Server:
    run_dir: Path
    inference_url: str
    management_url: str
    metrics_url: str
    ca: Path | None = None  # a replica off loopback speaks TLS: its certificate is verified against this CA
    grpc_address: str = ""  # host:port of the Open Inference Protocol's gRPC service (none: "")

    # tokens

    def keys(self) -> dict:
        return json.loads((self.run_dir / "key_file.json").read_text())

    def token(self, kind: str = "inference") -> str:
        """The current token of `kind` (inference | management | API) from key_file.json."""
        return self.keys()[kind]["key"]

    def token_expiry(self, kind: str = "inference") -> datetime | None:
        """When the token expires (the API key never does)."""
        stamp = self.keys()[kind].get("expiration time")
        if not stamp:
            return None
        # TorchServe writes nanoseconds ("2026-11-23T13:26:38.798260544Z"); keep microseconds.
        head, _, fraction = stamp.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{fraction[:6] or '0'}").replace(tzinfo=UTC)

    def token_expired(self, kind: str = "inference") -> bool:
        expiry = self.token_expiry(kind)
        return expiry is not None and expiry <= datetime.now(UTC)

    def refresh_token(self, kind: str = "inference") -> str:
        """Ask TorchServe for a new token of `kind` (with the API key) and return it."""
        self.request("POST", f"{self.management_url}/token?type={kind}", token=self.token("API"))
        return self.token(kind)

    # requests

    def request(
        self,
        method: str,
        url: str,
        body: dict | bytes | None = None,
        token: str | None = None,
        timeout: float = 30,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict | list | str, dict]:
        """(status, JSON or text body, headers); HTTP errors are returned, not raised."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = ({"Content-Type": "application/json"} if data is not None else {}) | (headers or {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        context = ssl.create_default_context(cafile=self.ca) if self.ca and url.startswith("https:") else None
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=context) as response:
                status, raw, response_headers = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            status, raw, response_headers = error.code, error.read(), dict(error.headers)
        try:
            return status, json.loads(raw), response_headers
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace"), response_headers

    def predict(self, name: str, instances: list, explain: bool = False, **extra) -> tuple[int, dict | str, dict]:
        route = "explanations" if explain else "predictions"
        return self.request(
            "POST", f"{self.inference_url}/{route}/{name}", {"instances": instances, **extra}, token=self.token()
        )

    def health(self) -> str:
        status, body, _ = self.request("GET", f"{self.inference_url}/ping", token=self.token(), timeout=5)
        return body.get("status", "") if status == 200 and isinstance(body, dict) else f"HTTP {status}"

    # management

    def manage(self, method: str, path: str, **params) -> tuple[int, dict | list | str, dict]:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        return self.request(method, f"{self.management_url}{path}{query}", token=self.token("management"), timeout=180)

    def models(self) -> list[str]:
        status, body, _ = self.manage("GET", "/models")
        return [m["modelName"] for m in body["models"]] if status == 200 else []

    def versions(self, name: str) -> list[dict]:
        """Every registered version of `name` with its workers (TorchServe's describe-model answer)."""
        status, body, _ = self.manage("GET", f"/models/{name}/all")
        return body if status == 200 and isinstance(body, list) else []

    def workers(self, name: str, version: str | None = None) -> list[dict]:
        path = f"/models/{name}" + (f"/{version}" if version else "")
        status, body, _ = self.manage("GET", path)
        return body[0].get("workers", []) if status == 200 and isinstance(body, list) and body else []

    def workers_ready(self, name: str, version: str | None = None) -> bool:
        return any(w.get("status") == "READY" for w in self.workers(name, version))


# where a server lives


def read_properties(path: Path) -> dict[str, str]:
    properties = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def server_for(run_dir: Path) -> Server:
    """The server whose config lives in `run_dir` (it may or may not be running)."""
    properties = read_properties(Path(run_dir) / "config.properties")
    ca = Path(run_dir) / CA_FILE
    return Server(
        Path(run_dir),
        properties.get("front_address", properties["inference_address"]),  # a front door's, where one runs
        properties["management_address"],
        properties["metrics_address"],
        ca if "certificate_file" in properties and ca.exists() else None,
        f"127.0.0.1:{properties['oip_grpc_port']}" if "oip_grpc_port" in properties else "",
    )
