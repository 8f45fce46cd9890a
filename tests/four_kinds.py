"""Every model kind served from one registry, for a fleet serving all of them (test_fleet): the suite's champions
(nw-sine, mha-adding, built once per run) in a private copy of their registry, with s2s-dates and pixel-digits tuned
briefly into it (smaller `dates`, same generator) and archived from their @champions."""

import functools
import shutil
from pathlib import Path

import pytest
from champion_versions import registry_copy

from training.data import datasets as data
from training.search.options import TuneOptions
from training.search.study import tune
from training.serving.archive import archive_champions

OTHER_KINDS = [("s2s", "dates"), ("pixel", "digits")]


def build_four_kinds(champions: dict, root: Path) -> tuple[Path, str]:
    """(the model store holding all four archives, the registry they are bound to)."""
    uri, store = registry_copy(champions, root), root / "archives"
    store.mkdir()
    for archive in champions["archives"]:
        shutil.copy(archive, store / archive.name)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(data.LOADERS, "dates", functools.partial(data.load_dates, n_train=800, n_val=100, n_test=100))
        for model, dataset in OTHER_KINDS:
            storage = f"sqlite:///{root / 'optuna.db'}"
            tune(TuneOptions(model=model, dataset=dataset, trials=1, epochs=1, progress=False, storage=storage,
                             tracking_uri=uri))  # fmt: skip
            archive_champions(f"{model}-{dataset}", out_dir=store, tracking_uri=uri)
    return store, uri
