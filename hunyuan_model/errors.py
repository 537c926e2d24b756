"""User-facing errors of the model package: one line, no traceback, exit code 2 at the CLI."""

from hv_common.errors import UserError


class CheckpointError(UserError):
    """A DiT file that cannot be read as a HunyuanVideo checkpoint (wrong model, torn, garbage, missing)."""
