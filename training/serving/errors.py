"""What serving refuses or fails at: one type per failure a caller handles, all under `ServingError`.

`ServingError` is a `RuntimeError`, so `python -m training` prints any of them as one `error:` line. The message
is for the user (what is wrong, and the command that fixes it); the type is for code and tests.
`signing.ArchiveSignatureError` is an `ArchiveRefusedError`, and `torchserve.TokenExpiredError` a `ServingError`.
"""

from __future__ import annotations


class ServingError(RuntimeError):
    """Serving could not do what was asked."""


class NotRunningError(ServingError):
    """No TorchServe runs from the run directory (`make serve` first)."""


class AlreadyRunningError(ServingError):
    """A TorchServe, or a monitor, runs already from that directory (`make stop` or `make monitor-stop` first)."""


class PortInUseError(ServingError):
    """A port the server would listen on is taken by another process."""


class MissingProgramError(ServingError):
    """A program serving needs is not installed: Java 17+ for TorchServe, Prometheus for the monitor."""


class StartupError(ServingError):
    """A server (TorchServe, Prometheus) stopped during start-up or was not ready in time."""


class ArchiveMissingError(ServingError):
    """An archive to serve is not there: none built, not the one named, or a verified copy gone from the store."""


class ArchiveRefusedError(ServingError):
    """An archive that is not served: tampered, signed by no trusted key, built as another, or built differently
    from the version of the same number already served."""


class ManagementError(ServingError):
    """TorchServe's management API refused a step of a rollout (register, READY worker, set-default, unregister)."""


class RolloutBusyError(ServingError):
    """Another deploy or rollback of the same model is under way on the server."""


class NothingToRollBackError(ServingError):
    """No version earlier than the one served is recorded: nothing to roll back to."""


class HistoryError(ServingError):
    """The server's history of served versions is not readable, or disagrees with what the server serves."""


class PrometheusQueryError(ServingError):
    """Prometheus refused a query."""
