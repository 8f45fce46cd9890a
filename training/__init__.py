"""Attention models tuned with Optuna, tracked in MLflow and served by TorchServe.

Subpackages by role, imports one way: `infra` (paths, ports, process plumbing; stdlib) and `nn` (torch-only
models, shipped in every archive) <- `data` <- `fit` <- `tracking` <- `search`; `tracking` <- `serving`;
`cli` and `demo` on top. `python -m training` is the command line.
"""

import os

# No network at run time: MLflow 3 reports usage to its telemetry service (config.mlflow-telemetry.io) unless told
# not to. Set before MLflow is imported, for this process and the MLflow servers and UIs it starts (they inherit it);
# a user who wants to send it sets MLFLOW_DISABLE_TELEMETRY=false.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
