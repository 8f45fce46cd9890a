"""The HTTP contract's one error type (it knows its status and renders the JSON error body), and the error a
worker refuses to start with."""

from __future__ import annotations


class RequestError(ValueError):
    """A request the model cannot answer; `status` is the HTTP code to send back."""

    def __init__(self, error: str, detail: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(f"{error}: {detail}")
        self.error, self.detail, self.status, self.headers = error, detail, status, headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.error, "detail": self.detail}


class WarmUpError(RuntimeError):
    """A loaded model that does not answer its own example request: the worker refuses to start with it."""
