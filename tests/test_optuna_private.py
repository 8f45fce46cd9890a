"""Optuna's private names, in training/tracking/optuna_private.py alone: each one it uses still there, callable and
taking the arguments it passes (a failure names the installed version and the name), and no other source of the
project touching Optuna's (or optuna-dashboard's) private modules, classes or attributes."""

import ast
import importlib
import inspect
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]
THE_MODULE = ROOT / "training" / "tracking" / "optuna_private.py"
SOURCES = ("training", "benchmarks", "handlers")
OPTUNA = f"optuna {optuna.__version__}"

# (module, attribute path, the parameters optuna_private.py passes, in order; None: not called)
CALLED = [
    ("optuna.storages._heartbeat", "BaseHeartbeat._get_stale_trial_ids", ["self", "study_id"]),
    ("optuna.storages._rdb.storage", "RDBStorage._create_new_trial", ["self", "study_id", "template_trial"]),
    (
        "optuna.storages._rdb.storage",
        "RDBStorage._get_trials",
        ["self", "study_id", "states", "included_trial_ids", "trial_id_greater_than"],
    ),
    ("optuna.storages._rdb.storage", "RDBStorage._get_stale_trial_ids", ["self", "study_id"]),
    (
        "optuna.storages._rdb.storage",
        "RDBStorage._set_trial_value_without_commit",
        ["self", "session", "trial", "objective", "value"],
    ),
    ("optuna.storages._rdb.storage", "RDBStorage.check_trial_is_updatable", ["self", "trial_id", "trial_state"]),
    ("optuna.storages._rdb.storage", "_create_scoped_session", ["scoped_session"]),
    ("optuna.storages._rdb.models", "TrialModel.find_or_raise_by_id", ["trial_id", "session", "for_update"]),
    ("optuna.storages._rdb.models", "TrialIntermediateValueModel.intermediate_value_to_stored_repr", ["value"]),
]
COLUMNS = {  # the table models and the columns optuna_private.py reads and writes
    "TrialModel": ["trial_id", "study_id", "state", "datetime_complete"],
    "TrialParamModel": ["trial_id", "param_name", "param_value", "distribution_json"],
    "TrialIntermediateValueModel": ["trial_id", "step", "intermediate_value", "intermediate_value_type"],
    "TrialUserAttributeModel": ["trial_id", "key", "value_json"],
    "TrialSystemAttributeModel": ["trial_id", "key", "value_json"],
}
DASHBOARD_CALLED = [
    ("optuna_dashboard._note", "note_ver_key", ["trial_id"]),
    ("optuna_dashboard._note", "save_note_with_version", ["storage", "study_id", "trial_id", "ver", "body"]),
]


def resolve(module: str, path: str, library: str):
    try:
        found = importlib.import_module(module)
    except ImportError as error:
        pytest.fail(f"{library}: module {module} is gone ({error}); training/tracking/optuna_private.py uses it")
    for part in path.split("."):
        if not hasattr(found, part):
            pytest.fail(f"{library}: {module}.{path} is gone ({part}); training/tracking/optuna_private.py uses it")
        found = getattr(found, part)
    return found


def check_signature(library: str, module: str, path: str, expected: list[str]) -> None:
    found = resolve(module, path, library)
    name = f"{module}.{path}"
    assert callable(found), f"{library}: {name} is no longer callable"
    parameters = list(inspect.signature(found).parameters.values())
    names = [p.name for p in parameters]
    assert names[: len(expected)] == expected, f"{library}: {name} takes {names} now; optuna_private passes {expected}"
    extra = [p.name for p in parameters[len(expected) :] if p.default is inspect.Parameter.empty]
    assert not extra, f"{library}: {name} wants {extra} now too"


@pytest.mark.parametrize(("module", "path", "expected"), CALLED, ids=[c[1] for c in CALLED])
def test_each_private_callable_is_there_with_the_arguments_used(module, path, expected):
    check_signature(OPTUNA, module, path, expected)


def test_the_table_models_have_the_columns_written():
    for model, columns in COLUMNS.items():
        table = resolve("optuna.storages._rdb.models", model, OPTUNA)
        missing = [c for c in columns if c not in table.__table__.columns]
        assert not missing, f"{OPTUNA}: optuna.storages._rdb.models.{model} lost the columns {missing}"


def test_the_private_ids_are_where_optuna_private_reads_them():
    from training.tracking import optuna_private

    study = optuna.create_study()
    trial = study.ask()
    for obj, name in ((trial, "_trial_id"), (study, "_study_id"), (study, "_storage")):
        assert hasattr(obj, name), f"{OPTUNA}: {type(obj).__name__}.{name} is gone"
    assert optuna_private.study_storage(study).get_trial(optuna_private.trial_id(trial)).number == trial.number
    study.tell(trial, 1.0)
    assert optuna_private.trial_id(study.trials[0]) == optuna_private.trial_id(trial)
    storage = optuna_private.study_storage(study)
    assert optuna_private.study_id(study) == storage.get_study_id_from_name(study.study_name)


def test_the_heartbeat_hook_is_the_one_optuna_calls():
    heartbeat = resolve("optuna.storages._heartbeat", "BaseHeartbeat", OPTUNA)
    abstract = set(heartbeat.__abstractmethods__)
    assert "_get_stale_trial_ids" in abstract, f"{OPTUNA}: BaseHeartbeat's hooks are {sorted(abstract)} now"


@pytest.mark.parametrize(("module", "path", "expected"), DASHBOARD_CALLED, ids=[c[1] for c in DASHBOARD_CALLED])
def test_each_private_callable_of_optuna_dashboard_is_there(module, path, expected):
    try:
        library = f"optuna-dashboard {version('optuna-dashboard')}"
    except PackageNotFoundError:
        pytest.skip("optuna-dashboard is not installed (the note is skipped without it)")
    check_signature(library, module, path, expected)


# the rest of the project: none of it


def optuna_private_names() -> set[str]:
    """Single-underscore names of Optuna's public classes and of their instances."""
    classes = [
        optuna.Study,
        optuna.Trial,
        optuna.trial.FrozenTrial,
        optuna.storages.BaseStorage,
        optuna.storages.RDBStorage,
        optuna.storages.InMemoryStorage,
        optuna.storages.JournalStorage,
        optuna.samplers.BaseSampler,
        optuna.samplers.TPESampler,
        optuna.pruners.BasePruner,
        optuna.pruners.MedianPruner,
    ]
    bases = {base for cls in classes for base in cls.__mro__ if base.__module__.startswith("optuna")}
    names = {name for base in bases for name in vars(base)}
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(), pruner=optuna.pruners.MedianPruner())
    trial = study.ask()
    study.tell(trial, 1.0)
    for instance in (
        study,
        trial,
        study.trials[0],
        study.sampler,
        study.pruner,
        optuna.storages.RDBStorage("sqlite://"),
    ):
        names |= set(vars(instance))
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def optuna_bases_private_names(module: str, class_name: str) -> set[str]:
    """The private names a project class inherits from Optuna's classes (none if it inherits none)."""
    cls = getattr(importlib.import_module(module), class_name, None)
    bases = [b for b in getattr(cls, "__mro__", ())[1:] if b.__module__.split(".")[0] == "optuna"]
    names = {name for base in bases for name in vars(base)}
    for base in bases:
        try:
            names |= set(vars(base()))
        except Exception:  # abstract, or wants arguments: its class's names only
            pass
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def private_uses(path: Path, private: set[str], root: Path = ROOT) -> list[str]:
    """Where `path` imports a private module or name of Optuna's or optuna-dashboard's, or reads a private attribute
    of an Optuna object (of its own Optuna base class, through `self`)."""
    module = ".".join(path.relative_to(root).with_suffix("").parts)
    tree, found = ast.parse(path.read_text()), []

    def libraries(name: str) -> bool:
        return name.split(".")[0] in ("optuna", "optuna_dashboard")

    def is_private(dotted: str) -> bool:
        return any(part.startswith("_") for part in dotted.split("."))

    def visit(node: ast.AST, inherited: set[str]) -> None:
        if isinstance(node, ast.ClassDef):
            inherited = optuna_bases_private_names(module, node.name)
        where = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            found.extend(f"{where} import {a.name}" for a in node.names if libraries(a.name) and is_private(a.name))
        elif isinstance(node, ast.ImportFrom) and libraries(node.module or ""):
            names = [a.name for a in node.names if is_private(a.name)]
            if is_private(node.module) or names:
                found.append(f"{where} from {node.module} import {', '.join(names) or '…'}")
        elif isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            on_self = isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")
            by_library = isinstance(base, ast.Name) and libraries(base.id)
            if by_library or (node.attr in inherited if on_self else node.attr in private):
                found.append(f"{where} {ast.unparse(node)}")
        for child in ast.iter_child_nodes(node):
            visit(child, inherited)

    visit(tree, set())
    return found


def test_no_source_but_optuna_private_touches_optunas_private_names():
    private = optuna_private_names()
    assert {"_trial_id", "_study_id", "_storage", "_get_trials"} <= private  # the scan knows what it looks for
    sources = [p for root in SOURCES for p in sorted((ROOT / root).rglob("*.py")) if p != THE_MODULE]
    found = [use for path in sources for use in private_uses(path, private)]
    assert not found, "Optuna's private names outside training/tracking/optuna_private.py:\n" + "\n".join(found)


def test_the_scan_finds_what_the_storage_used_to_do(tmp_path):
    old = tmp_path / "old.py"
    old.write_text(
        "from optuna.storages._cached_storage import _CachedStorage\n"
        "from optuna.storages import _CachedStorage as C\n"
        "import optuna.storages._rdb.models\n"
        "def flush(trial, study):\n"
        "    return trial._trial_id, study._storage._backend, optuna.storages._CachedStorage\n"
    )
    uses = private_uses(old, optuna_private_names(), root=tmp_path)
    assert len(uses) == 6, uses  # three imports, `_trial_id`, `_storage`, `_CachedStorage` (`_backend` is ours too)
