"""Where the MLflow UI for a store is: the links printed at the end of a command and stored in run notes.

A tracking server is its own UI; a local store's UI is `make ui` on loopback. Links never carry a password.
"""

from __future__ import annotations

from training.infra import places, storage_urls
from training.infra.places import LOOPBACK, MLFLOW_PORT
from training.tracking import mlflow_store


def ui_base(tracking_uri: str | None = None, port: int = MLFLOW_PORT) -> str:
    """Where the MLflow UI for this store is: the tracking server itself, or `make ui` on loopback."""
    uri = tracking_uri or mlflow_store.default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return storage_urls.redact(uri).rstrip("/")  # links are printed and stored: never with a password
    return f"http://{LOOPBACK}:{port}"


def ui_command_for(tracking_uri: str | None = None) -> str:
    """The command that serves the UI for this store ('' when a tracking server already does)."""
    uri = tracking_uri or mlflow_store.default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        return ""
    if uri == f"sqlite:///{places.MLRUNS / 'mlflow.db'}":
        return "make ui"
    return f"python -m training ui --tracking-uri {storage_urls.redact(uri)}"


def review_link(tracking_uri: str | None, route: str) -> str:
    """`make ui -> http://127.0.0.1:5000/#/experiments/...`, pointing at the store actually used."""
    url = f"{ui_base(tracking_uri)}/{route}"
    command = ui_command_for(tracking_uri)
    return f"{command} -> {url}" if command else url
