"""The HunyuanVideo DiT, its configurations and checkpoint loading.

Importing this package imports neither diffusers nor transformers: start-up time is a feature.
"""

from .config import PRESETS, DiTConfig, get_preset
from .errors import CheckpointError

__all__ = ["PRESETS", "CheckpointError", "DiTConfig", "get_preset"]
