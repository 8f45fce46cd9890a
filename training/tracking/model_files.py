"""What a registered version's files are: its checkpoint, where each layout keeps it, and the module that loads it.

Since the registry carries data, not code, a version holds the checkpoint as MLflow's model data
(`data/checkpoint.pt`) and names a loader module installed with the project. Versions logged before hold it as
an artifact of a model from code (`artifacts/checkpoint.pt`, next to their own copy of the package): still read.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT = "checkpoint.pt"
# Named, not imported: tracking sits below serving. tests/test_model_form.py loads a version through it.
LOADER_MODULE = "training.serving.pyfunc"
LAYOUTS = (f"data/{CHECKPOINT}", f"artifacts/{CHECKPOINT}")  # the loader module's; a model from code's (before)


def checkpoint_in(model_dir: str | Path) -> Path:
    """The checkpoint of a downloaded version: the first layout present (the loader module's when none is)."""
    found = [Path(model_dir) / layout for layout in LAYOUTS]
    return next((path for path in found if path.is_file()), found[0])
