"""The LoRA file error: a file that cannot be read, or that does not fit the network or the DiT (one line)."""

from __future__ import annotations

from hv_common.errors import UserError


class LoRAFileError(UserError):
    """A LoRA file that cannot be read, or that does not fit the network (other modules or ranks)."""
