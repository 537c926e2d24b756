"""`--sample_prompts` files: musubi-tuner's prompt lines, or a TOML / JSON list of prompt tables.

A line is the prompt, then options: `a cat walks --w 256 --h 256 --f 5 --d 42 --s 20 --g 6.0 --fs 14.5
--n blurry --l 5.0` (width, height, frames, seed, steps, embedded guidance scale, flow shift, negative prompt,
CFG scale). `#` lines and blank lines are skipped. Unlike musubi-tuner, an unknown option or a bad value is an
error naming the file, the line and the option, never a silently different preview.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hv_common.errors import UserError

logger = logging.getLogger(__name__)

SIZE_MULTIPLE = 16  # the VAE's 8x times the DiT's 2x2 patches
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class PromptDefaults:
    """What a prompt gets for an option it does not set. musubi-tuner's HunyuanVideo preview defaults,
    except the seed: musubi-tuner draws a random one; a fixed one keeps previews comparable across steps."""

    width: int = 256
    height: int = 256
    frames: int = 1
    seed: int = 42
    steps: int = 20
    guidance: float = 6.0
    flow_shift: float = 14.5
    cfg_scale: float | None = None
    negative: str | None = None


@dataclass(frozen=True)
class SamplePrompt:
    text: str
    width: int
    height: int
    frames: int
    seed: int
    steps: int
    guidance: float  # embedded guidance scale (the DiT's guidance input / 1000)
    flow_shift: float
    cfg_scale: float | None  # true CFG against `negative` when set and != 1
    negative: str | None
    index: int  # position in the file, 0-based: names the preview files
    where: str  # "file:line" or "file: entry N", for messages

    @property
    def uses_cfg(self) -> bool:
        return self.cfg_scale is not None and self.cfg_scale != 1.0


def _int(value: Any, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError
    number = int(value.strip()) if isinstance(value, str) else value
    if not minimum <= number <= maximum:
        raise ValueError
    return number


def _float(value: Any, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError
    number = float(value)
    if not math.isfinite(number) or number < 0 or (positive and number == 0):
        raise ValueError
    return number


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError
    return value.strip()


# option -> (field, parse, what a valid value is)
_Parser = Callable[[Any], Any]
_OPTIONS: dict[str, tuple[str, _Parser, str]] = {
    "w": ("width", lambda v: _int(v, 1, 16384), "a width in pixels"),
    "h": ("height", lambda v: _int(v, 1, 16384), "a height in pixels"),
    "f": ("frames", lambda v: _int(v, 1, 4096), "a frame count (1, 5, 9, ... 4k + 1)"),
    "d": ("seed", lambda v: _int(v, 0, MAX_SEED), "a seed, an integer >= 0"),
    "s": ("steps", lambda v: _int(v, 1, 1000), "a step count from 1 to 1000"),
    "g": ("guidance", lambda v: _float(v, positive=False), "an embedded guidance scale >= 0"),
    "fs": ("flow_shift", lambda v: _float(v, positive=True), "a flow shift > 0"),
    "l": ("cfg_scale", lambda v: _float(v, positive=True), "a CFG scale > 0"),
    "n": ("negative", _text, "a negative prompt"),
}
# musubi-tuner's key names in TOML / JSON prompt tables, and ours.
_TABLE_KEYS: dict[str, str] = {
    "width": "w",
    "height": "h",
    "frame_count": "f",
    "frames": "f",
    "seed": "d",
    "sample_steps": "s",
    "steps": "s",
    "guidance_scale": "g",
    "guidance": "g",
    "discrete_flow_shift": "fs",
    "flow_shift": "fs",
    "cfg_scale": "l",
    "negative_prompt": "n",
    "negative": "n",
    **{k: k for k in _OPTIONS},
}


def _short(text: str, limit: int = 80) -> str:
    """A user's text cut for a one-line message (a 10 MB value must not become a 10 MB line)."""
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} characters)"


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _set_option(values: dict[str, Any], option: str, raw: Any, where: str, shown: str) -> None:
    field, parse, expected = _OPTIONS[option]
    if field in values:
        raise UserError(f"{where}: {shown} is given twice")
    try:
        values[field] = parse(raw)
    except (ValueError, TypeError):
        raise UserError(f"{where}: {shown} {_short(repr(raw))}: expected {expected}") from None


def _finish(
    text: str, values: dict[str, Any], defaults: PromptDefaults, index: int, where: str
) -> SamplePrompt:
    """Fill in the defaults, round sizes as musubi-tuner does (saying so), and check what is left."""
    if not text:
        raise UserError(f"{where}: no prompt text (a line is the prompt first, then its --options)")
    merged = {**dataclasses.asdict(defaults), **values}
    for field in ("width", "height"):
        size = merged[field]
        if size % SIZE_MULTIPLE:
            rounded = size // SIZE_MULTIPLE * SIZE_MULTIPLE
            if rounded == 0:
                raise UserError(f"{where}: {field} {size}: must be at least {SIZE_MULTIPLE} pixels")
            logger.warning(
                "%s: %s %d is not a multiple of %d; using %d", where, field, size, SIZE_MULTIPLE, rounded
            )
            merged[field] = rounded
    frames = merged["frames"]
    if (frames - 1) % 4:
        rounded = (frames - 1) // 4 * 4 + 1
        logger.warning("%s: %d frames is not 4k + 1; using %d", where, frames, rounded)
        merged["frames"] = rounded
    if "negative" in values and not (merged["cfg_scale"] is not None and merged["cfg_scale"] != 1.0):
        logger.warning("%s: the negative prompt is unused without a CFG scale (--l) other than 1", where)
    return SamplePrompt(text=text, index=index, where=where, **merged)


def parse_prompt_line(line: str, defaults: PromptDefaults, index: int, where: str) -> SamplePrompt:
    """One musubi-tuner prompt line: `text --opt value --opt value ...`."""
    text, *options = line.strip().split(" --")
    if text.startswith("--"):
        raise UserError(f"{where}: the line starts with {text.split()[0]!r}: the prompt text comes first")
    values: dict[str, Any] = {}
    for part in options:
        name, _, raw = part.strip().partition(" ")
        option = name.lower()
        if option not in _OPTIONS:
            hint = _did_you_mean(option, list(_OPTIONS))
            known = " ".join(f"--{k}" for k in _OPTIONS)
            raise UserError(f"{where}: unknown option --{_short(name)}{hint}; known: {known}")
        if not raw.strip():
            raise UserError(f"{where}: --{name} has no value")
        _set_option(values, option, raw.strip(), where, f"--{name}")
    return _finish(text.strip(), values, defaults, index, where)


def _parse_table(table: dict, defaults: PromptDefaults, index: int, where: str) -> SamplePrompt:
    values: dict[str, Any] = {}
    text = table.get("prompt")
    if not isinstance(text, str):
        raise UserError(f"{where}: needs a 'prompt' string")
    for key, raw in table.items():
        if key in ("prompt", "enum"):  # musubi-tuner numbers its entries itself
            continue
        if key not in _TABLE_KEYS:
            raise UserError(
                f"{where}: unknown key {_short(repr(key))}{_did_you_mean(key, list(_TABLE_KEYS))}"
            )
        _set_option(values, _TABLE_KEYS[key], raw, where, repr(key))
    return _finish(text.strip(), values, defaults, index, where)


def _entries(data: Any, path: Path) -> list[Any]:
    """musubi-tuner's shapes: a JSON list; TOML `[prompt]` defaults + `[[prompt.subset]]`; or `[[prompt]]`."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict) and isinstance(data.get("prompt"), list):
        return data["prompt"]
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        shared = dict(data["prompt"])
        subsets = shared.pop("subset", None)
        if not isinstance(subsets, list):
            raise UserError(f"{path}: [prompt] needs a [[prompt.subset]] list of prompt tables")
        return [{**shared, **s} if isinstance(s, dict) else s for s in subsets]
    raise UserError(
        f"{path}: expected a list of prompt tables ([[prompt]], or [prompt] with [[prompt.subset]])"
    )


def _load_structured(path: Path, content: str, defaults: PromptDefaults) -> list[SamplePrompt]:
    if path.suffix.lower() == ".toml":
        import toml

        try:
            data = toml.loads(content)
        except toml.TomlDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid TOML ({e.msg})") from None
        except Exception as e:  # the toml package fails on some garbage with IndexError, RecursionError, ...
            raise UserError(f"{path}: not valid TOML ({type(e).__name__} in the parser)") from None
    else:
        try:
            data = json.loads(content)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
        except (RecursionError, ValueError) as e:  # nesting too deep; an integer of > 4300 digits
            raise UserError(f"{path}: not valid JSON ({type(e).__name__}: {_short(str(e))})") from None
    prompts = []
    for i, entry in enumerate(_entries(data, path)):
        where = f"{path}: entry {i + 1}"
        if isinstance(entry, str):
            prompts.append(parse_prompt_line(entry, defaults, i, where))
        elif isinstance(entry, dict):
            prompts.append(_parse_table(entry, defaults, i, where))
        else:
            raise UserError(f"{where}: expected a prompt line or a table, got {type(entry).__name__}")
    return prompts


def load_prompts(path: str | Path, defaults: PromptDefaults | None = None) -> list[SamplePrompt]:
    """Every prompt of a `--sample_prompts` file (.toml and .json as tables, anything else as lines)."""
    path = Path(path)
    defaults = defaults or PromptDefaults()
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"--sample_prompts {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"--sample_prompts {path}: cannot read it ({e})") from None
    if path.suffix.lower() in (".toml", ".json"):
        prompts = _load_structured(path, content, defaults)
    else:
        prompts = []
        for number, line in enumerate(content.splitlines(), start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                prompts.append(parse_prompt_line(line, defaults, len(prompts), f"{path}:{number}"))
    if not prompts:
        raise UserError(f"--sample_prompts {path}: no prompts in the file")
    return prompts
