"""Every model kind, tuned briefly into one pair of real stores and archived from the registry's @champions: what
a fleet serving all of them (test_fleet) starts with. Small data sets (same generators) keep it to seconds."""

import functools
from pathlib import Path

import pytest

from training.data import datasets as data
from training.search.options import TuneOptions
from training.search.study import tune
from training.serving.archive import archive_champions

SMALLER = {
    "adding": functools.partial(data.load_adding, n_train=300, n_val=100, n_test=100),
    "dates": functools.partial(data.load_dates, n_train=800, n_val=100, n_test=100),
}
KINDS = [("nw", "sine", 2, None), ("mha", "adding", 1, 1), ("s2s", "dates", 1, 1), ("pixel", "digits", 1, 1)]


def build_four_kinds(stores: dict, out_dir: Path) -> list[Path]:
    with pytest.MonkeyPatch.context() as patch:
        for name, loader in SMALLER.items():
            patch.setitem(data.LOADERS, name, loader)
        for model, dataset, trials, epochs in KINDS:
            options = TuneOptions(model=model, dataset=dataset, trials=trials, progress=False, **stores)
            tune(options if epochs is None else TuneOptions(**{**vars(options), "epochs": epochs}))
        return archive_champions(out_dir=out_dir, tracking_uri=stores["tracking_uri"])
