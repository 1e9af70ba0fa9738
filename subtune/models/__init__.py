"""Model architectures: each family's adapter says where its stem, blocks, neck and classifier are
(adapter.py, one module per family, registry.py), and a base model is an architecture with its
weights (base.py).

Block numbers are 1-based everywhere a user sees them, as in the paper (ResNet-50 has blocks 1..16).
"""

from subtune.models.adapter import Adapter, Backbone
from subtune.models.base import BaseModel, diff_keys, fingerprint, make_base
from subtune.models.registry import build_model, get_adapter, known_architectures, register

__all__ = ["Adapter", "Backbone", "BaseModel", "build_model", "diff_keys", "fingerprint", "get_adapter",
           "known_architectures", "make_base", "register"]
