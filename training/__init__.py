"""Attention models tuned with Optuna, tracked in MLflow and served by TorchServe.

`training.nn` holds the torch-only models (the serving path); the other modules (data, fit, tuning,
tracking, archiving, CLI) may import anything.
"""
