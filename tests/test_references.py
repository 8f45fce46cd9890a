"""Paths and module names in the docs, docstrings and comments name what exists: a file moved or a module renamed
takes its mentions along (the tables module's old path once outlived its move to `training/data/` in five comments).

Checked: `training/…`, `handlers/…`, `benchmarks/…` and `tests/…` paths (each an existing file or folder, or a
module without its `.py`) and dotted names under `training` or `handlers` (each a module, or a name a module defines)
in the `.py` files' docstrings and comments, in `docs/*.md`, `README.md` and the `Makefile`. `tests/fixtures/`
(code from before the move) is not.
"""

import ast
import io
import re
import tokenize
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "handlers", "benchmarks", "tests")
PATH = re.compile(r"(?<![\w/.-])((?:training|handlers|benchmarks|tests)(?:/[\w.-]+)+/?)")
DOTTED = re.compile(r"(?<![\w/.-])((?:training|handlers)(?:\.[A-Za-z_]\w*)+)")


def sources() -> list[Path]:
    found = [p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))]
    found = [p for p in found if "fixtures" not in p.relative_to(ROOT).parts]
    return found + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md", ROOT / "Makefile"]


def prose(path: Path) -> list[tuple[int, str]]:
    """(line, text) of a `.py` file's docstrings and comments; a page or the Makefile whole."""
    source = path.read_text()
    if path.suffix != ".py":
        return [(number, line) for number, line in enumerate(source.splitlines(), 1)]
    found = [
        (token.start[0], token.string)
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT
    ]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            docstring = ast.get_docstring(node, clean=False)
            if docstring:
                found.append((node.body[0].lineno, docstring))
    return found


@cache
def defined(module: Path) -> frozenset[str]:
    """The names a module defines or imports at its top level."""
    names = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return frozenset(names)


def module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.exists()), None)


def resolves(dotted: str) -> bool:
    """A module, or a module and a name it defines (`training.tracking.registry.mark_version`)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module = module_file(parts[:cut])
        if module is not None:
            return cut == len(parts) or parts[cut] in defined(module)
    return False


def stale(text: str) -> list[str]:
    """The paths and dotted names in `text` that name nothing in the checkout."""
    paths = [m.rstrip(".") for m in PATH.findall(text)]
    missing = [p for p in paths if not (ROOT / p).exists() and not (ROOT / f"{p}.py").exists()]
    return missing + [d for d in DOTTED.findall(text) if not resolves(d)]


def test_every_path_and_module_named_in_the_docs_and_comments_exists():
    found = [
        f"{path.relative_to(ROOT)}:{line}: {name}"
        for path in sources()
        for line, text in prose(path)
        for name in stale(text)
    ]
    assert found == [], "a file moved or a module renamed: point these at where it is now"


def test_stale_names_are_found_and_current_ones_pass():
    text = "see training/tables.py, `training.serve`, tune.py and training/data/tables.py (`training.data.tables`)."
    assert stale(text) == ["training/tables.py", "training.serve"]
    assert stale("training/serving/, training/__init__, handlers.contract.") == []
    assert stale("`training.tracking.registry.mark_version`, `training.tracking.registry.no_such_function`") == [
        "training.tracking.registry.no_such_function"
    ]
    assert stale("/elsewhere/training/tune.py, code/training/fit.py") == []  # someone else's tree, not ours
