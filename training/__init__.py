"""Attention models tuned with Optuna, tracked in MLflow and served by TorchServe.

Subpackages by role, imports one way: `infra` (paths, ports, process plumbing; stdlib) and `nn` (torch-only
models, shipped in every archive) <- `data` <- `fit` <- `tracking` <- `search`; `tracking` <- `serving`;
`cli` and `demo` on top. `python -m training` is the command line.
"""
