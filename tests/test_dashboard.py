"""`make dashboard`'s guard around optuna-dashboard, in process: a foreign `Host` (DNS rebinding) gets nothing, and a
read-only dashboard refuses every change."""

import io
import json
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
from optuna_dashboard import wsgi

from training.operations.dashboard import guard, host_name


@pytest.fixture
def storage():
    storage = optuna.storages.InMemoryStorage()
    optuna.create_study(storage=storage, study_name="nw-file").set_user_attr("data_file", "/home/me/rows.csv")
    return storage


def call(app, method: str, path: str, host: str) -> tuple[int, bytes]:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "HTTP_HOST": host, "wsgi.input": io.BytesIO()}
    setup_testing_defaults(environ)
    answer = {}
    body = b"".join(app(environ, lambda status, headers, *_: answer.setdefault("status", int(status[:3]))))
    return answer["status"], body


def studies(storage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage)]


@pytest.mark.parametrize("host", ["evil.example:8083", "evil.example", "127.0.0.1.evil.example", "", "10.0.0.1:8083"])
def test_a_foreign_host_reads_and_deletes_nothing(storage, host):
    app = guard(wsgi(storage))
    assert call(app, "GET", "/api/studies", host) == (
        403,
        f"host {host_name(host)!r} is not served here (ALLOWED_HOSTS)\n".encode(),
    )
    assert call(app, "DELETE", "/api/studies/0", host)[0] == 403
    assert studies(storage) == ["nw-file"]


@pytest.mark.parametrize("host", ["127.0.0.1:8083", "localhost:8083", "LOCALHOST.", "[::1]:8083", "127.0.0.2"])
def test_loopback_names_and_allowed_hosts_are_answered(storage, host):
    for app, name in ((guard(wsgi(storage)), host), (guard(wsgi(storage), ["review.lan"]), "review.lan:8083")):
        status, body = call(app, "GET", "/api/studies", name)
        assert status == 200 and [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["nw-file"]


def test_read_only_refuses_every_change_and_the_default_allows_them(storage):
    read_only = guard(wsgi(storage), read_only=True)
    for method in ("DELETE", "POST", "PUT", "PATCH"):
        assert call(read_only, method, "/api/studies/0", "127.0.0.1:8083")[0] == 405
    assert studies(storage) == ["nw-file"] and call(read_only, "GET", "/api/studies", "localhost")[0] == 200
    assert call(guard(wsgi(storage)), "DELETE", "/api/studies/0", "127.0.0.1:8083")[0] == 204
    assert studies(storage) == []
