"""Model adapters: each architecture family says where its stem, blocks, neck and classifier are.

Block numbers are 1-based everywhere a user sees them, as in the paper (ResNet-50 has blocks 1..16).
"""

from subtune.models.adapter import Adapter, Backbone, build_model, get_adapter, known_architectures

__all__ = ["Adapter", "Backbone", "build_model", "get_adapter", "known_architectures"]
