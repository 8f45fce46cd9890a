"""One place per model kind: every layer's table of families names the same kinds, and no module outside the
families' own asks a model its class (`isinstance(model, NadarayaWatson)` chains are how a kind got open-coded in
many files)."""

import ast
from pathlib import Path

import pytest

from handlers.contract import ADAPTERS
from training.data import families as data_families
from training.fit import families as fit_families
from training.nn import FAMILIES, build_model, family, family_of
from training.search import space
from training.tracking import families as tracking_families

ROOT = Path(__file__).resolve().parents[1]
MODEL_CLASSES = {"NadarayaWatson", "SequenceModel", "Seq2Seq", "PixelModel"}
# The families' own modules: each model's module (its class and its `FAMILY`) and their table.
OWN = {f"training/nn/{name}.py" for name in ("nadaraya_watson", "sequence_model", "seq2seq", "pixel", "families")}


def class_checks(source: str) -> list[tuple[int, str]]:
    """(line, class) of each `isinstance(..., <model class>)` in `source`, tuples of classes included."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            if len(node.args) != 2:
                continue
            classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
            for cls in classes:
                name = cls.id if isinstance(cls, ast.Name) else cls.attr if isinstance(cls, ast.Attribute) else ""
                if name in MODEL_CLASSES:
                    found.append((node.lineno, name))
    return found


def test_the_scan_finds_class_checks_in_every_form():
    source = "isinstance(m, NadarayaWatson)\nisinstance(m, (int, nn.PixelModel))\nisinstance(m, Standardize)\n"
    assert class_checks(source) == [(1, "NadarayaWatson"), (2, "PixelModel")]


def test_no_module_outside_the_families_checks_a_models_class():
    offenders = []
    for folder in ("training", "handlers", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            where = path.relative_to(ROOT).as_posix()
            if where not in OWN:
                offenders += [f"{where}:{line}: isinstance(..., {cls})" for line, cls in class_checks(path.read_text())]
    assert not offenders, "look the kind up instead (training/nn/families.py `family_of`):\n" + "\n".join(offenders)


def test_every_layer_knows_every_kind():
    kinds = set(FAMILIES)
    assert kinds == {"nw", "mha", "s2s", "pixel"}  # the names checkpoints, studies and archives carry
    assert set(data_families.FAMILIES) == kinds
    assert set(fit_families.FAMILIES) == kinds
    assert set(space.FAMILIES) == kinds
    assert set(tracking_families.FAMILIES) == kinds
    assert set(ADAPTERS) == kinds
    for name in kinds:  # each layer's part is of the same family
        for table in (data_families.FAMILIES, fit_families.FAMILIES, space.FAMILIES, tracking_families.FAMILIES):
            assert table[name].family is FAMILIES[name]
        assert ADAPTERS[name].family is FAMILIES[name]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_built_model_belongs_to_the_family_that_built_it(name):
    config = {"nw": {}, "mha": {"in_features": 2}, "s2s": {"source_vocab": ["a"], "target_vocab": ["b"]}, "pixel": {}}
    model = build_model(name, config[name])
    assert family_of(model) is family(name) and isinstance(model, family(name).model)


def test_an_unknown_kind_is_refused_naming_the_known():
    with pytest.raises(ValueError, match="unknown model kind 'rnn'; expected one of"):
        family("rnn")
    with pytest.raises(TypeError, match="not a model of this package"):
        family_of(object())
