"""`make dashboard`: optuna-dashboard behind a guard that answers only loopback's host names, read-only if asked.

optuna-dashboard checks no `Host` header and has no login: a web page the operator visits could point a name of
its own at 127.0.0.1 (DNS rebinding) and read study attributes or delete studies. The guard answers a request only
when its `Host` is a loopback name (`localhost`, 127.0.0.0/8, `::1`) or one listed in `--allowed-hosts`, and in
read-only mode refuses every method but GET and HEAD (notes, trial states, deletions), whoever asks.
"""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]
LOOPBACK_NAMES = frozenset({"localhost"})
READS = frozenset({"GET", "HEAD"})


def host_name(header: str) -> str:
    """The name in a `Host` header, lower case, without its port or trailing dot (`[::1]:8083` -> `::1`)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")]
    return header.rsplit(":", 1)[0].rstrip(".") if header.count(":") == 1 else header.rstrip(".")


def is_loopback(name: str) -> bool:
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return name in LOOPBACK_NAMES


def guard(app: WSGIApp, allowed_hosts: Iterable[str] = (), read_only: bool = False) -> WSGIApp:
    """`app` answering only loopback names and `allowed_hosts` (403 otherwise); with `read_only`, GET and HEAD (405
    otherwise)."""
    allowed = {host_name(name) for name in allowed_hosts if name}

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        name = host_name(environ.get("HTTP_HOST", ""))
        if not (is_loopback(name) or name in allowed):
            return refuse(start_response, "403 Forbidden", f"host {name!r} is not served here (ALLOWED_HOSTS)")
        if read_only and environ["REQUEST_METHOD"] not in READS:
            return refuse(start_response, "405 Method Not Allowed", "this dashboard is read-only")
        return app(environ, start_response)

    return guarded


def refuse(start_response: Callable, status: str, why: str) -> list[bytes]:
    body = f"{why}\n".encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))])
    return [body]


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # no line per request
        pass


def main(argv: list[str] | None = None) -> None:
    from optuna_dashboard import wsgi

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("storage")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--allowed-hosts", default="", help="host names to answer besides loopback's, comma-separated")
    parser.add_argument("--read-only", action="store_true", help="refuse every method but GET and HEAD")
    args = parser.parse_args(argv)
    app = guard(wsgi(args.storage), args.allowed_hosts.split(","), args.read_only)
    make_server(args.host, args.port, app, server_class=ThreadingServer, handler_class=QuietHandler).serve_forever()


if __name__ == "__main__":
    main()
