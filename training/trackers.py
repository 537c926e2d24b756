"""The trackers of `--log_with`: checked before anything heavy loads, then started as musubi-tuner starts them:
keyword arguments per tracker (`--log_tracker_config`, `--wandb_run_name`), wandb's login (`--wandb_api_key`)
and, with `--log_config`, the run's options as the trackers' configuration."""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hv_common.errors import UserError
from hv_common.options import option_values

if TYPE_CHECKING:
    from training.options import LoggingOptions, TrainConfig
    from training.run import Run

logger = logging.getLogger(__name__)

DEFAULT_TRACKER_NAME = "hv_lora"
# --log_config leaves these out, as musubi-tuner does: secrets, and paths that may name a user's folders
SECRETS = ("wandb_api_key", "huggingface_token")
PATHS = ("dit", "vae", "text_encoder1", "text_encoder2", "network_weights", "output_dir", "logging_dir")


def tracker_names(options: LoggingOptions) -> list[str]:
    """The trackers this run logs to (musubi-tuner's rule: --logging_dir alone means TensorBoard)."""
    trackers = options.trackers
    return ["tensorboard", "wandb"] if trackers == "all" else [trackers] if trackers else []


def check_trackers(options: LoggingOptions) -> None:
    """Before the model loads: each tracker's package is there (accelerate would drop a missing one without a
    word), TensorBoard has a folder, the tracker config file reads, and an option for a tracker not in use says
    that it is not used."""
    names = tracker_names(options)
    for name in names:
        if importlib.util.find_spec(name) is None:
            raise UserError(
                f"--log_with {options.trackers}: the {name} package is not installed (pip install {name})"
            )
    if "tensorboard" in names and not options.logging_dir:
        raise UserError("--log_with tensorboard needs --logging_dir (where the event files go)")
    if "wandb" not in names:
        for name, value in (
            ("wandb_run_name", options.wandb_run_name),
            ("wandb_api_key", options.wandb_api_key),
        ):
            if value:
                logger.warning(
                    "--%s is not used: this run does not log to wandb (--log_with wandb or all)", name
                )
    if options.log_config and not names:
        logger.warning("--log_config is not used: this run logs to no tracker (--logging_dir, --log_with)")
    if options.log_tracker_config:
        _read_tracker_config(options.log_tracker_config, names)


def _read_tracker_config(path: str, names: list[str]) -> dict[str, dict[str, Any]]:
    """{tracker: keyword arguments} from the TOML file, one table per tracker."""
    import toml

    where = f"--log_tracker_config {path}"
    try:
        doc = toml.loads(Path(path).read_text(encoding="utf-8-sig"))
    except OSError as e:
        raise UserError(f"{where}: cannot read it: {e.strerror or e}") from None
    except (toml.TomlDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{where}: not a TOML file ({str(e).splitlines()[0]})") from None
    for name, table in doc.items():
        if not isinstance(table, dict):
            raise UserError(f"{where}: {name} must be a table of one tracker's arguments ([{name}] ...)")
        if name not in names:
            logger.warning(
                "%s: [%s] is not used: this run logs to %s", where, name, ", ".join(names) or "nothing"
            )
    return doc


def init_kwargs(options: LoggingOptions) -> dict[str, dict[str, Any]]:
    """The trackers' keyword arguments: the file's tables, and --wandb_run_name as wandb's `name` (the command
    line wins over the file; musubi-tuner dropped the run name when a file was given)."""
    names = tracker_names(options)
    kwargs = _read_tracker_config(options.log_tracker_config, names) if options.log_tracker_config else {}
    if options.wandb_run_name:
        kwargs["wandb"] = {**kwargs.get("wandb", {}), "name": options.wandb_run_name}
    return kwargs


def logged_config(config: TrainConfig) -> dict[str, Any] | None:
    """--log_config: every option's value, as accelerate's trackers take them (None, bool, str, int, float;
    lists written out as text), without secrets and paths. None without --log_config."""
    if not config.logging.log_config:
        return None
    values: dict[str, Any] = {}
    for name, value in option_values(config).items():
        if name in SECRETS or name in PATHS:
            continue
        if isinstance(value, tuple):
            value = str(list(value))
        elif value is not None and not isinstance(value, (bool, str, int, float)):
            value = str(value)
        values[name] = value
    return values


def login_wandb(options: LoggingOptions, log_dir: Path | None) -> None:
    """musubi-tuner's wandb set-up: its files go under this run's log folder, and --wandb_api_key logs in."""
    wandb = importlib.import_module("wandb")  # an optional package (check_trackers made sure it is there)

    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        os.environ["WANDB_DIR"] = str(log_dir)
    if options.wandb_api_key:
        wandb.login(key=options.wandb_api_key)


def start_trackers(run: Run) -> None:
    """Start the run's trackers (nothing without --log_with / --logging_dir)."""
    options = run.config.logging
    names = tracker_names(options)
    if not names:
        return
    if "wandb" in names and run.accelerator.is_main_process:
        login_wandb(options, run.log_dir)
    run.accelerator.init_trackers(
        options.log_tracker_name or DEFAULT_TRACKER_NAME,
        config=logged_config(run.config),
        init_kwargs=init_kwargs(options),
    )
