"""Attention primitives and models: pure torch, importable by the serving path with torch alone."""

from .checkpoint import MODELS, build_model, load_checkpoint, model_kind, save_checkpoint
from .nadaraya_watson import NadarayaWatson, NWConfig
from .sequence_model import SequenceConfig, SequenceModel

__all__ = [
    "MODELS",
    "NWConfig",
    "NadarayaWatson",
    "SequenceConfig",
    "SequenceModel",
    "build_model",
    "load_checkpoint",
    "model_kind",
    "save_checkpoint",
]
