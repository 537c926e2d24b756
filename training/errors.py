"""User errors of the trainer: the CLI prints them as `error: <one line>` and exits with code 2."""

from __future__ import annotations


class UserError(ValueError):
    """Bad arguments, missing files, a module that cannot be used: the user can fix it, no traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")))


def user_error_types() -> tuple[type[Exception], ...]:
    """Every exception type that means "the user can fix this" across the packages the trainer drives."""
    from dataset.cache_files import CacheFileError
    from dataset.errors import DatasetConfigError, MediaError
    from hunyuan_model.attention import AttentionBackendError
    from hunyuan_model.errors import CheckpointError
    from networks.lora_file import LoRAFileError
    from networks.network_args import NetworkArgsError

    return (
        UserError,
        NetworkArgsError,
        LoRAFileError,
        CheckpointError,
        DatasetConfigError,
        MediaError,
        CacheFileError,
        AttentionBackendError,
    )
