"""Errors are typed: no bare `RuntimeError` is raised in `training/` or `handlers/`, each serving failure has its
own type under `ServingError`, and the command line prints any of them as one `error:` line."""

import ast
import inspect
from pathlib import Path

from training.cli import main
from training.serving import errors
from training.serving.signing import ArchiveSignatureError, UnsignedArchiveError
from training.serving.torchserve import TokenExpiredError
from training.tracking.registry import ChecksumMismatchError, NoChampionError, RegistryError

ROOT = Path(__file__).resolve().parents[1]
BARE = {"RuntimeError", "Exception"}


def bare_raises(source: str) -> list[int]:
    """The lines that raise a bare `RuntimeError` or `Exception` (called or not)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise) and node.exc is not None:
            raised = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            if isinstance(raised, ast.Name) and raised.id in BARE:
                lines.append(node.lineno)
    return lines


def test_no_module_raises_a_bare_runtime_error():
    found = [
        f"{path.relative_to(ROOT)}:{line}"
        for package in ("training", "handlers")
        for path in sorted((ROOT / package).rglob("*.py"))
        for line in bare_raises(path.read_text())
    ]
    assert found == [], "raise a type of training/serving/errors.py (or the layer's own) instead"


def test_the_scan_finds_bare_raises_and_passes_typed_ones():
    source = "raise RuntimeError('x')\nraise RuntimeError\nraise errors.ServingError('x')\n"
    source += "try:\n    pass\nexcept OSError:\n    raise\n"
    assert bare_raises(source) == [1, 2]


def test_every_serving_error_is_a_serving_error_and_a_runtime_error():
    defined = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(defined) > 10 and all(issubclass(c, errors.ServingError) for c in defined)
    assert issubclass(errors.ServingError, RuntimeError)  # what training/cli.py catches
    assert issubclass(UnsignedArchiveError, ArchiveSignatureError)
    assert issubclass(ArchiveSignatureError, errors.ArchiveRefusedError)
    assert issubclass(TokenExpiredError, errors.ServingError)
    assert issubclass(NoChampionError, RegistryError) and issubclass(ChecksumMismatchError, RegistryError)
    assert issubclass(RegistryError, RuntimeError) and not issubclass(RegistryError, errors.ServingError)


def test_the_command_line_prints_a_serving_error_as_one_line(tmp_path, capsys):
    assert main(["token", "--run-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: TorchServe is not running from {tmp_path}: `make serve` first\n"
