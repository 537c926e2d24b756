"""The dataset TOML (musubi-tuner's format): `[general]` defaults, `[[datasets]]`, `[[validation_datasets]]`.

`load_dataset_config(path)` reads it into frozen dataclasses or raises a one-line DatasetConfigError naming
the file and the key. Relative paths resolve against the current directory, as musubi-tuner resolves them,
so a TOML written for it works unchanged; messages show the resolved absolute path.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import toml

from . import schema
from .buckets import RESOLUTION_STEP, BucketSelector
from .errors import DatasetConfigError
from .foreign_keys import ForeignKeyError, take_foreign_keys
from .frames import is_vae_frame_count, normalise_target_frames

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetOrigin:
    """Where a dataset was written: for messages that point the user at the right table."""

    config_file: Path
    section: str  # "datasets" or "validation_datasets"
    index: int  # 0-based position among the section's tables
    base_dir: Path  # what relative paths (here and in a JSONL file) resolve against

    def where(self, key: str | None = None) -> str:
        table = f"{self.section}[{self.index}]"
        return f"{table}.{key}" if key else table

    def error(self, key: str | None, message: str) -> DatasetConfigError:
        return DatasetConfigError(f"{self.config_file}: {self.where(key)}: {message}")


@dataclass(frozen=True, kw_only=True)
class BaseDatasetConfig:
    """Settings every dataset has. Defaults are musubi-tuner's."""

    origin: DatasetOrigin
    cache_directory: Path  # absolute; defaults to the media directory, as in musubi-tuner
    resolution: tuple[int, int] = (960, 544)
    caption_extension: str | None = None
    batch_size: int = 1
    num_repeats: int = 1
    enable_bucket: bool = False
    bucket_no_upscale: bool = False

    is_video: ClassVar[bool] = False

    def bucket_selector(self) -> BucketSelector:
        return BucketSelector(self.resolution, self.enable_bucket, self.bucket_no_upscale)


@dataclass(frozen=True, kw_only=True)
class ImageDatasetConfig(BaseDatasetConfig):
    image_directory: Path | None = None
    image_jsonl_file: Path | None = None

    @property
    def source_key(self) -> str:
        return "image_directory" if self.image_directory is not None else "image_jsonl_file"


@dataclass(frozen=True, kw_only=True)
class VideoDatasetConfig(BaseDatasetConfig):
    video_directory: Path | None = None
    video_jsonl_file: Path | None = None
    target_frames: tuple[int, ...] = (1,)  # each 4k+1 (rounded down at load)
    frame_extraction: str = "head"
    frame_stride: int = 1
    frame_sample: int = 1
    max_frames: int = 129
    source_fps: float | None = None

    is_video: ClassVar[bool] = True

    @property
    def source_key(self) -> str:
        return "video_directory" if self.video_directory is not None else "video_jsonl_file"

    def bucket_selector(self) -> BucketSelector:
        # musubi-tuner buckets every video when caching, whatever enable_bucket and bucket_no_upscale say
        return BucketSelector(self.resolution, enable_bucket=True, no_upscale=False)


DatasetConfig = ImageDatasetConfig | VideoDatasetConfig


@dataclass(frozen=True)
class DatasetBlueprint:
    """Everything a dataset TOML says, validated."""

    config_file: Path
    datasets: tuple[DatasetConfig, ...]
    validation_datasets: tuple[DatasetConfig, ...] = ()

    @property
    def all_datasets(self) -> tuple[DatasetConfig, ...]:
        return self.datasets + self.validation_datasets


def load_dataset_config(
    path: str | Path, *, check_media: bool = True, base_dir: str | Path | None = None
) -> DatasetBlueprint:
    """Read and validate a dataset TOML.

    check_media: also list every dataset's media and captions (directories exist and are not empty, each
    file has its caption, JSONL lines are valid), so bad data fails here rather than hours later.
    base_dir: what relative paths resolve against; the current directory by default (musubi-tuner's rule).
    """
    config_file = Path(path)
    doc = _read_config(config_file)
    general = _parse_general(doc.get("general", {}), config_file)
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    sections = {}
    for section in ("datasets", "validation_datasets"):
        tables = _tables(doc, section, config_file)
        origins = [DatasetOrigin(config_file, section, i, base) for i in range(len(tables))]
        sections[section] = tuple(
            _parse_dataset(t, general, o, check_media) for t, o in zip(tables, origins, strict=True)
        )
    if not sections["datasets"]:
        raise DatasetConfigError(
            f"{config_file}: no [[datasets]] table; add one with image_directory or video_directory"
        )
    blueprint = DatasetBlueprint(config_file, sections["datasets"], sections["validation_datasets"])
    _check_unique_cache_directories(blueprint.all_datasets)
    if check_media:
        from .sources import list_media  # here: sources imports this module

        for dataset in blueprint.all_datasets:
            list_media(dataset)
    return blueprint


MAX_CONFIG_BYTES = 1 << 20  # real dataset configs are a few KB; megabytes of TOML are not one


def _read_config(config_file: Path) -> dict[str, Any]:
    try:
        found = config_file.is_file()
        size = config_file.stat().st_size if found else 0
    except OSError as e:  # a name too long for the file system, ...
        raise DatasetConfigError(
            f"{schema.shorten(str(config_file))}: cannot read the dataset config: {e.strerror}"
        ) from None
    if not found:
        raise DatasetConfigError(f"{config_file}: dataset config not found ({config_file.absolute()})")
    if size > MAX_CONFIG_BYTES:
        raise DatasetConfigError(
            f"{config_file}: {size} bytes is too large for a dataset config (at most 1 MiB)"
        )
    try:
        text = config_file.read_text(encoding="utf-8-sig")  # -sig: a BOM from a Windows editor is not TOML
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetConfigError(f"{config_file}: cannot read the dataset config: {e}") from None
    doc = (
        _parse_json(text, config_file)
        if config_file.suffix.lower() == ".json"
        else _parse_toml(text, config_file)
    )
    for key in doc:
        if key in schema.DATASET_KEYS:
            raise DatasetConfigError(f"{config_file}: {key}: put it under [general] or a [[datasets]] table")
        if key not in schema.TOP_LEVEL_KEYS:
            hint = schema.did_you_mean(key, schema.TOP_LEVEL_KEYS)
            raise DatasetConfigError(
                f"{config_file}: {schema.shorten(key)}: unknown top-level key{hint}; expected [general], [[datasets]]"
            )
    return doc


def _parse_json(text: str, config_file: Path) -> dict[str, Any]:
    """A .json dataset config: musubi-tuner reads those too, with the same keys as the TOML."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetConfigError(
            f"{config_file}: line {e.lineno}: JSON syntax error: {e.msg} at column {e.colno}"
        ) from None
    except RecursionError:
        raise DatasetConfigError(f"{config_file}: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise DatasetConfigError(
            f'{config_file}: expected a JSON object like {{"general": {{...}}, "datasets": [...]}}'
        )
    return doc


def _parse_toml(text: str, config_file: Path) -> dict[str, Any]:
    try:
        return toml.loads(text)
    except toml.TomlDecodeError as e:
        raise DatasetConfigError(f"{config_file}: line {e.lineno}: TOML syntax error: {e.msg}") from None
    except Exception as e:  # the toml package fails on some garbage with IndexError, RecursionError, ...
        raise DatasetConfigError(
            f"{config_file}: TOML syntax error ({type(e).__name__} in the parser)"
        ) from None


def _tables(doc: dict[str, Any], section: str, config_file: Path) -> list[dict[str, Any]]:
    tables = doc.get(section, [])
    if isinstance(tables, dict):
        raise DatasetConfigError(
            f"{config_file}: {section}: write [[{section}]] (an array of tables), not [{section}]"
        )
    if not (isinstance(tables, list) and all(isinstance(t, dict) for t in tables)):
        raise DatasetConfigError(f"{config_file}: {section}: expected [[{section}]] tables")
    return tables


def _parse_general(table: Any, config_file: Path) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise DatasetConfigError(f"{config_file}: general: expected a [general] table")
    for key in table:
        if key not in schema.GENERAL_KEYS:
            where = f"{config_file}: general.{schema.shorten(key)}"
            if key in schema.PATH_KEYS:
                raise DatasetConfigError(f"{where}: set it in each [[datasets]] table, not in [general]")
            raise DatasetConfigError(f"{where}: unknown key{schema.did_you_mean(key, schema.GENERAL_KEYS)}")
    return {
        key: _check(schema.GENERAL_KEYS[key], value, f"{config_file}: general.{key}")
        for key, value in table.items()
    }


def _check(checker: schema.Checker, value: Any, where: str) -> Any:
    try:
        return checker(value)
    except schema.BadValue as e:
        raise DatasetConfigError(f"{where}: {e}") from None


def _parse_dataset(
    table: dict[str, Any], general: dict[str, Any], origin: DatasetOrigin, check_media: bool = True
) -> DatasetConfig:
    # musubi-tuner's rule: a table with a video source is a video dataset, any other an image dataset
    looks_video = any(key in table for key in schema.VIDEO_SOURCE_KEYS)
    try:
        table = take_foreign_keys(table, looks_video, f"{origin.config_file}: {origin.where()}")
    except ForeignKeyError as e:
        raise origin.error(e.key, str(e)) from None
    for key in table:
        if key not in schema.DATASET_KEYS:
            raise origin.error(
                schema.shorten(key), f"unknown key{schema.did_you_mean(key, schema.DATASET_KEYS)}"
            )
    given = {
        key: _check(schema.DATASET_KEYS[key], v, f"{origin.config_file}: {origin.where(key)}")
        for key, v in table.items()
    }
    source_key = _source_key(given, origin)
    is_video = source_key in schema.VIDEO_SOURCE_KEYS
    if not is_video:
        for key in given:
            if key in schema.VIDEO_KEYS:
                raise origin.error(key, f"applies to video datasets only (this one has {source_key})")
    allowed = schema.DATASET_KEYS if is_video else {**schema.COMMON_KEYS, **schema.PATH_KEYS}
    values = {k: v for k, v in general.items() if k in allowed} | given
    paths = _paths(values, source_key, origin, check_media)
    if source_key.endswith("_directory") and "caption_extension" not in values:
        raise origin.error(
            "caption_extension", f'required with {source_key}; set it here or in [general], e.g. ".txt"'
        )
    if is_video:
        _warn_ignored_bucket_keys(values, set(given) | set(general), origin)
        values = _normalise_video(values, set(given), origin)
    klass = VideoDatasetConfig if is_video else ImageDatasetConfig
    fields: dict[str, Any] = {**values, **paths}  # _paths popped its keys from values: none is given twice
    config = klass(origin=origin, **fields)
    if not is_video:
        _check_resolution(config)
    return config


def _paths(
    values: dict[str, Any], source_key: str, origin: DatasetOrigin, check_media: bool
) -> dict[str, Path]:
    """Take the path keys out of `values`, resolved; cache_directory gets its default. The source must exist
    when the media is to be read; the trainer (check_media=False) may run on a folder of caches copied alone."""
    paths = {k: resolve_path(values.pop(k), origin.base_dir) for k in schema.PATH_KEYS if k in values}
    if check_media:
        _check_source_path(paths[source_key], source_key, origin)
    if "cache_directory" not in paths:
        if source_key.endswith("_jsonl_file"):
            raise origin.error(
                "cache_directory", f"required with {source_key} (musubi-tuner requires it too)"
            )
        paths["cache_directory"] = paths[source_key]  # musubi-tuner's default: beside the media
    return paths


def _source_key(given: dict[str, Any], origin: DatasetOrigin) -> str:
    found = [key for key in schema.SOURCE_KEYS if key in given]
    if len(found) != 1:
        what = "none" if not found else "both " + " and ".join(found)
        raise origin.error(None, f"set exactly one of {', '.join(schema.SOURCE_KEYS)} (found {what})")
    return found[0]


def resolve_path(value: str, base: Path) -> Path:
    """Absolute as given; relative against `base`. Normalised (no ..), symlinks kept as the user wrote them."""
    path = Path(value).expanduser()
    return Path(os.path.abspath(path if path.is_absolute() else base / path))


def _check_source_path(path: Path, key: str, origin: DatasetOrigin) -> None:
    try:
        path.stat()
    except OSError as e:  # a missing path is named below; other errors (name too long, no access) here
        if not isinstance(e, (FileNotFoundError, NotADirectoryError)):
            raise origin.error(key, f"cannot use {path}: {e.strerror}") from None
    except ValueError:  # an embedded NUL byte: is_dir() / is_file() below say False
        pass
    if key.endswith("_directory"):
        if not path.is_dir():
            raise origin.error(
                key, f"{'not a directory' if path.exists() else 'directory not found'}: {path}"
            )
    elif not path.is_file():
        raise origin.error(key, f"{'not a file' if path.exists() else 'file not found'}: {path}")


def _warn_ignored_bucket_keys(values: dict[str, Any], written: set[str], origin: DatasetOrigin) -> None:
    """`written`: the keys set in the dataset's table or in [general]."""
    if (values.get("enable_bucket") is False and "enable_bucket" in written) or values.get(
        "bucket_no_upscale"
    ):
        logger.warning(
            f"{origin.config_file}: {origin.where()}: videos are always bucketed (enable_bucket = true, "
            "bucket_no_upscale = false), as musubi-tuner caches them; those two keys apply to images only"
        )


def _normalise_video(values: dict[str, Any], given: set[str], origin: DatasetOrigin) -> dict[str, Any]:
    """musubi-tuner's video rules, each change named in a warning: target_frames rounded down to 4k+1 and
    sorted, uniform with one sample is head. given: the keys set in the dataset's own table."""
    where = f"{origin.config_file}: {origin.where()}"
    frames = values.get("target_frames", VideoDatasetConfig.target_frames)
    rounded = normalise_target_frames(frames)
    if any(not is_vae_frame_count(f) for f in frames):
        logger.warning(
            f"{where}.target_frames: {list(frames)} rounded down to "
            f"{list(rounded)}: the VAE takes 4k+1 frames (1, 5, 9, ..., 25, ...)"
        )
    mode = values.get("frame_extraction", VideoDatasetConfig.frame_extraction)
    if mode == "uniform" and values.get("frame_sample", 1) == 1:
        logger.warning(
            f"{where}: frame_extraction = 'uniform' with frame_sample = 1 is 'head' (as in musubi-tuner)"
        )
        mode = values["frame_extraction"] = "head"
    if mode == "chunk" and 1 in rounded:
        logger.warning(
            f"{origin.config_file}: {origin.where('target_frames')}: 1 with frame_extraction = 'chunk' "
            "makes every single frame an item"
        )
    for key, used_by in (("frame_stride", "slide"), ("frame_sample", "uniform"), ("max_frames", "full")):
        if key in given and mode != used_by:  # a [general] default may be meant for other datasets
            logger.warning(
                f"{origin.config_file}: {origin.where(key)}: only used with frame_extraction = "
                f"'{used_by}' (this dataset uses '{mode}'); ignored"
            )
    return {**values, "target_frames": rounded}


def _check_resolution(config: DatasetConfig) -> None:
    w, h = config.resolution
    if not config.enable_bucket and (w % RESOLUTION_STEP or h % RESOLUTION_STEP):
        raise config.origin.error(
            "resolution",
            f"{w}x{h} must be multiples of {RESOLUTION_STEP} when enable_bucket "
            "is false (the VAE downsamples by 8, the DiT patches by 2)",
        )


def _check_unique_cache_directories(datasets: tuple[DatasetConfig, ...]) -> None:
    seen: dict[Path, DatasetConfig] = {}
    for dataset in datasets:
        key = dataset.cache_directory.resolve()
        if key in seen:
            first = seen[key].origin.where()
            raise dataset.origin.error(
                "cache_directory",
                f"{dataset.cache_directory} is also the cache directory of "
                f"{first}; each dataset needs its own (it defaults to the media directory)",
            )
        seen[key] = dataset
