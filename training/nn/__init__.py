"""Attention primitives and models: pure torch, importable by the serving path with torch alone."""

from . import novelty
from .checkpoint import build_model, load_checkpoint, save_checkpoint
from .families import FAMILIES, family, family_of, model_kind
from .family import Family, Inputs, Outputs
from .nadaraya_watson import NadarayaWatson, NWConfig
from .pixel import PixelConfig, PixelModel, PixelSelfAttention
from .seq2seq import Seq2Seq, Seq2SeqConfig, translate
from .sequence_model import SequenceConfig, SequenceModel

__all__ = [
    "FAMILIES",
    "Family",
    "Inputs",
    "NWConfig",
    "NadarayaWatson",
    "Outputs",
    "PixelConfig",
    "PixelModel",
    "PixelSelfAttention",
    "Seq2Seq",
    "Seq2SeqConfig",
    "SequenceConfig",
    "SequenceModel",
    "build_model",
    "family",
    "family_of",
    "load_checkpoint",
    "model_kind",
    "novelty",
    "save_checkpoint",
    "translate",
]
