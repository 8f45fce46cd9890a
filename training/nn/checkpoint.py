"""Checkpoints: weights (state_dict) plus the config as JSON, no pickled code.

A checkpoint loads with `torch.load(weights_only=True)` and rebuilds the model from its config,
so it is safe to read and needs nothing but torch and this package.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from .families import family, model_kind
from .integrity import file_sha256

FORMAT_VERSION = 1


def build_model(kind: str, config: object) -> nn.Module:
    """Build a model of `kind` ("nw", "mha", "s2s" or "pixel") from its config dataclass or a dict of its fields."""
    return family(kind).build(config)


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict | None = None) -> str:
    """Write the checkpoint and return the sha256 of the file."""
    payload = {
        "format": FORMAT_VERSION,
        "kind": model_kind(model),
        "config": json.dumps(dataclasses.asdict(model.config)),
        "metadata": json.dumps(metadata or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    torch.save(payload, path)
    return file_sha256(path)


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model (eval mode, on `device`) and return it with the checkpoint's metadata."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported checkpoint format {payload.get('format')!r}")
    model = build_model(payload["kind"], json.loads(payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.to(device).eval(), json.loads(payload["metadata"])
