"""User-facing errors of the data side: one line each, so the CLI can print them and exit with code 2."""

from __future__ import annotations

from hv_common.errors import UserError


class DatasetConfigError(UserError):
    """A dataset TOML (or a file it points at) that cannot be used. The message names the file and the key."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


class MediaError(UserError):
    """An image or video that cannot be decoded. The message names the file."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))
