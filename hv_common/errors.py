"""The one user-error base: bad input the user can fix. The CLI prints it as `error: <one line>`, exit code 2.

Every package's own error type (a dataset TOML, a DiT file, a LoRA file, --network_args, a cache file, an
attention backend) derives from `UserError`, so `hv_common/cli.py` knows them all without importing them.
Any other exception keeps its traceback: it is a bug.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad arguments, missing files, a module that cannot be used: the user can fix it, no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))
