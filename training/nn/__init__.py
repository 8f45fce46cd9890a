"""Attention primitives and models: pure torch, importable by the serving path with torch alone."""

from . import novelty
from .checkpoint import MODELS, build_model, load_checkpoint, model_kind, save_checkpoint
from .nadaraya_watson import NadarayaWatson, NWConfig
from .pixel import PixelConfig, PixelModel, PixelSelfAttention
from .seq2seq import Seq2Seq, Seq2SeqConfig, translate
from .sequence_model import SequenceConfig, SequenceModel

__all__ = [
    "MODELS",
    "NWConfig",
    "NadarayaWatson",
    "PixelConfig",
    "PixelModel",
    "PixelSelfAttention",
    "Seq2Seq",
    "Seq2SeqConfig",
    "SequenceConfig",
    "SequenceModel",
    "build_model",
    "load_checkpoint",
    "model_kind",
    "novelty",
    "save_checkpoint",
    "translate",
]
