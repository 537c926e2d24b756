"""LoRA key layouts of the HunyuanVideo DiT: each read into one common form, and written back out.

| layout      | keys                                                            | written by / read by          |
|-------------|-----------------------------------------------------------------|-------------------------------|
| `default`   | `lora_unet_<our path, . -> _>.lora_down.weight / .lora_up.weight / .alpha` | us, musubi-tuner     |
| `other`     | `diffusion_model.<our path>.lora_A.weight / .lora_B.weight`     | ComfyUI, diffusers' converter |
|             | `transformer.<our path>.lora_A.weight / ...` (read only)        | diffusion-pipe                |
| `diffusers` | `transformer.<diffusers path>.lora_A.weight / .lora_B.weight`   | diffusers / PEFT              |

The common form maps our module names (`double_blocks.0.img_attn_qkv`) to `Factors`, whose weight update is
`up @ down * alpha / rank`, or to a LyCORIS `LoHa` / `LoKr` (lora_files/lycoris.py: `hada_w1_a`, `lokr_w1`, ...
after the same prefixes as LoRA's keys in the default and `other` layouts; diffusers' layout has none).
Module names are resolved with the one table in `hunyuan_model.diffusers_layout`, and every width comes from
the tensors.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch

from hunyuan_model.diffusers_layout import ModuleMap, module_maps
from lora_files.errors import LoRAFileError
from lora_files.lycoris import ROLES as LYCORIS_ROLES
from lora_files.lycoris import LoHa, LoKr, is_lycoris, read_module
from networks.lora import lora_name_for
from networks.network_args import NetworkArgsError, has_nested_repeat
from networks.pattern_guard import match_sets

LAYOUTS = ("default", "other", "diffusers")
_LYCORIS = "|".join(re.escape(role) for role in LYCORIS_ROLES)
_DEFAULT_KEY = re.compile(
    rf"(?P<name>lora_unet_[A-Za-z0-9_]+)\.(?P<role>lora_down\.weight|lora_up\.weight|alpha|{_LYCORIS})"
)
_AB_KEY = re.compile(
    rf"(?:diffusion_model\.|transformer\.)?(?P<name>.+)\.(?P<role>lora_A\.weight|lora_B\.weight|alpha|{_LYCORIS})"
)
OTHER_PREFIX = "diffusion_model"  # the `other` layout's key prefix (convert_lora.py --diffusers_prefix)
DIFFUSERS_PREFIX = "transformer"  # the `diffusers` layout's
_MAX_BLOCKS = 512  # a stray key with a huge number must not build a huge table
PEFT_METADATA_KEY = "lora_adapter_metadata"  # diffusers stores the LoraConfig (alpha!) here
EXPECTED = (
    "expected lora_unet_<module>.lora_down.weight (ours, musubi-tuner), diffusion_model.<module>.lora_A.weight "
    "(ComfyUI), transformer.<module>.lora_A.weight (diffusion-pipe) or diffusers' module names"
)
_Module = TypeVar("_Module")  # how a layout's lookup names a module: our name, or (ModuleMap, part index)


@dataclass(frozen=True)
class Factors:
    """One module's LoRA: down (rank, in) is A, up (out, rank) is B."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    kind = "LoRA"

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the Linear it adapts."""
        return self.up.shape[0], self.down.shape[1]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, multiplier: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
        """The fp32 weight update, (out, in)."""
        up = self.up.to(device=device, dtype=torch.float32)
        down = self.down.to(device=device, dtype=torch.float32)
        return (up @ down).mul_(multiplier * self.scale)


ModuleWeights = Factors | LoHa | LoKr  # what one module of a file holds; each has .delta() and .shape
LoRAWeights = dict[str, ModuleWeights]


# ---------------------------------------------------------------- module tables


def _maps(keys: Iterable[str]) -> list[ModuleMap]:
    """Every module of a DiT with at least as many blocks as the keys mention (the fit check comes later)."""
    # a number of > 6 digits is past _MAX_BLOCKS anyway (and int() refuses > 4300 digits)
    n = 1 + max(
        (int(d) if len(d) < 7 else _MAX_BLOCKS for k in keys for d in re.findall(r"\d+", k)), default=0
    )
    n = min(n, _MAX_BLOCKS)
    return module_maps(n, n, n, guidance=True)


def _theirs(maps: list[ModuleMap]) -> dict[str, tuple[ModuleMap, int]]:
    return {name: (m, i) for m in maps for i, name in enumerate(m.theirs)}


def _swap(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _first_key_error(source: str, key: str, layout: str | None = None) -> LoRAFileError:
    where = f"the file is in the {layout} layout, but " if layout else "unknown LoRA layout: "
    return LoRAFileError(f"{source}: {where}unrecognised key {key!r}; {EXPECTED}")


# ---------------------------------------------------------------- reading


def detect_layout(keys: Iterable[str], source: str = "LoRA file") -> str:
    """The layout of the first key (sorted); a key no layout knows is a one-line error."""
    keys = sorted(keys)
    if not keys:
        raise LoRAFileError(f"{source}: holds no tensors")
    key, maps = keys[0], _maps(keys)
    if (m := _DEFAULT_KEY.fullmatch(key)) and m["name"] in {lora_name_for(x.ours) for x in maps}:
        return "default"
    if m := _AB_KEY.fullmatch(key):
        if m["name"] in {x.ours for x in maps}:
            return "other"
        if m["name"] in _theirs(maps):
            return "diffusers"
    raise _first_key_error(source, key)


def _grouped(
    sd: Mapping[str, torch.Tensor],
    pattern: re.Pattern[str],
    lookup: Mapping[str, _Module],
    layout: str,
    source: str,
) -> dict[_Module, dict[str, torch.Tensor]]:
    """{module: {"down"|"up"|"alpha": tensor}} for every key, or an error naming the first stray key."""
    roles = {
        "lora_down.weight": "down",
        "lora_A.weight": "down",
        "lora_up.weight": "up",
        "lora_B.weight": "up",
        "alpha": "alpha",
    }
    out: dict[_Module, dict[str, torch.Tensor]] = {}
    for key in sorted(sd):
        m = pattern.fullmatch(key)
        module = lookup.get(m["name"]) if m else None
        if m is None or module is None:
            raise _first_key_error(source, key, layout)
        out.setdefault(module, {})[roles.get(m["role"], m["role"])] = sd[key]
    return out


def _factors(
    name: str, parts: Mapping[str, torch.Tensor], source: str, alpha: float | None = None
) -> Factors:
    if "down" not in parts or "up" not in parts:
        missing = "down (A)" if "down" not in parts else "up (B)"
        raise LoRAFileError(f"{source}: module {name} has no {missing} weight")
    down, up = parts["down"], parts["up"]
    if down.ndim != 2 or up.ndim != 2 or up.shape[1] != down.shape[0]:
        raise LoRAFileError(
            f"{source}: module {name}: down {tuple(down.shape)} and up {tuple(up.shape)} are not a LoRA pair"
        )
    if "alpha" in parts:
        alpha = float(parts["alpha"])
    # kohya's convention, which LoRAModule follows too: no alpha (or 0) means alpha = rank, a scale of 1
    return Factors(down, up, alpha or float(down.shape[0]))


def _module(name: str, parts: Mapping[str, torch.Tensor], source: str) -> ModuleWeights:
    return read_module(name, parts, source) if is_lycoris(parts) else _factors(name, parts, source)


def _read_default(sd, maps, source) -> LoRAWeights:
    lookup = {lora_name_for(m.ours): m.ours for m in maps}
    groups = _grouped(sd, _DEFAULT_KEY, lookup, "default", source)
    return {name: _module(name, parts, source) for name, parts in groups.items()}


def _read_other(sd, maps, source) -> LoRAWeights:
    groups = _grouped(sd, _AB_KEY, {m.ours: m.ours for m in maps}, "other", source)
    return {name: _module(name, parts, source) for name, parts in groups.items()}


def _peft_alpha(metadata: Mapping[str, str] | None, module: str, rank: int, source: str) -> float | None:
    """The alpha diffusers would use for `module` (its saved LoraConfig); None: none saved (alpha = rank)."""
    raw = (metadata or {}).get(PEFT_METADATA_KEY)
    if not raw:
        return None
    try:
        config = {k.removeprefix("transformer."): v for k, v in json.loads(raw).items()}
    except (ValueError, AttributeError):
        raise LoRAFileError(f"{source}: unreadable {PEFT_METADATA_KEY} in the header") from None
    if config.get("use_dora"):
        raise LoRAFileError(f"{source}: a DoRA adapter (use_dora); only plain LoRA can be converted")
    try:  # the header is the file author's text: a bad number or a regex bomb is an error, not a hang
        alpha = float(config.get("lora_alpha") or config.get("r") or rank)
        for pattern, value in (config.get("alpha_pattern") or {}).items():  # PEFT's rule: a suffix match
            if has_nested_repeat(pattern):
                raise LoRAFileError(
                    f"{source}: alpha_pattern {pattern[:80]!r} in the header nests repetitions"
                )
            if _peft_matches(
                pattern if pattern.startswith("^") else rf"(.*\.)?(?:{pattern})", module, source
            ):
                alpha = float(value)
                break
        if not math.isfinite(alpha):
            raise ValueError(alpha)
    except (ValueError, TypeError, AttributeError, re.error, RecursionError, OverflowError) as e:
        if isinstance(e, LoRAFileError):
            raise
        raise LoRAFileError(
            f"{source}: unreadable {PEFT_METADATA_KEY} in the header ({type(e).__name__})"
        ) from None
    # rsLoRA scales by alpha / sqrt(rank); expressed as an alpha for our alpha / rank
    return alpha * math.sqrt(rank) if config.get("use_rslora") else alpha


def _peft_matches(pattern: str, module: str, source: str) -> bool:
    """re.fullmatch through the pattern guard: a header's `(.|.)*Z` is refused, not hours of backtracking."""
    try:
        return module in match_sets([("alpha_pattern", pattern)], [module])[pattern]
    except NetworkArgsError:
        raise LoRAFileError(
            f"{source}: alpha_pattern {pattern[:80]!r} in the header would not finish matching"
        ) from None


def _read_diffusers(sd, maps, source, metadata, widths) -> LoRAWeights:
    groups = _grouped(sd, _AB_KEY, _theirs(maps), "diffusers", source)
    for (m, i), parts in groups.items():
        if is_lycoris(parts):
            raise LoRAFileError(
                f"{source}: {m.theirs[i]} is a LyCORIS module in diffusers' module names; its parts cannot be "
                f"fused into our {m.ours} (LoHa / LoKr are read in the default and `other` layouts)"
            )
    by_module: dict[ModuleMap, dict[int, Factors]] = {}
    for (m, i), parts in groups.items():
        rank = parts["down"].shape[0] if "down" in parts else 1
        alpha = _peft_alpha(metadata, m.theirs[i], rank, source)
        by_module.setdefault(m, {})[i] = _factors(m.theirs[i], parts, source, alpha)
    return {m.ours: _fuse(m, parts, widths, source) for m, parts in by_module.items()}


def _fuse(m: ModuleMap, parts: dict[int, Factors], widths: Mapping[str, int] | None, source: str) -> Factors:
    """diffusers' separate q, k, v (+ MLP-in) LoRAs as one LoRA on our fused Linear.

    Parts that share one A (files split from a fused LoRA) keep the rank: up is the parts' B's stacked.
    Otherwise down stacks the A's along the rank and up is block-diagonal: rank = the sum of the ranks.
    A part the file lacks contributes zero rows. Scales are folded into up (the result has alpha = rank).
    """
    first = parts[min(parts)]
    if len(m.theirs) == 1:
        return Factors(first.down, _swap(first.up) if m.swap_halves else first.up, first.alpha)
    hidden, dtype = first.down.shape[1], first.down.dtype
    if any(f.down.shape[1] != hidden for f in parts.values()):
        raise LoRAFileError(f"{source}: the LoRAs on {', '.join(m.theirs)} have different input widths")
    widths_out = [_part_width(m, i, parts, hidden, widths, source) for i in range(len(m.theirs))]
    ups = {i: f.up.float() * f.scale for i, f in parts.items()}
    shared = all(f.down.shape == first.down.shape and torch.equal(f.down, first.down) for f in parts.values())
    if shared:
        rank = first.rank
        rows = [
            ups[i] if i in parts else ups[min(parts)].new_zeros(w, rank) for i, w in enumerate(widths_out)
        ]
        down, up = first.down, torch.cat(rows)
    else:
        order = sorted(parts)
        down = torch.cat([parts[i].down.to(dtype) for i in order])
        up = torch.zeros(sum(widths_out), down.shape[0])
        col = 0
        for i in order:
            row = sum(widths_out[:i])
            up[row : row + widths_out[i], col : col + parts[i].rank] = ups[i]
            col += parts[i].rank
    return Factors(down, up.to(dtype), float(down.shape[0]))


def _part_width(
    m: ModuleMap,
    i: int,
    parts: dict[int, Factors],
    hidden: int,
    widths: Mapping[str, int] | None,
    source: str,
) -> int:
    if i in parts:
        return parts[i].up.shape[0]
    if not m.theirs[i].endswith("proj_mlp"):
        return hidden  # q, k and v are as wide as the block's input
    if widths and m.ours in widths:
        return widths[m.ours] - hidden * (len(m.theirs) - 1)
    raise LoRAFileError(
        f"{source}: {m.theirs[i].rsplit('.', 1)[0]} has LoRAs on attn.to_q/to_k/to_v but none on proj_mlp: "
        f"our fused {m.ours} needs the MLP width, which only the DiT knows (pass --dit)"
    )


def read_layout(
    sd: Mapping[str, torch.Tensor],
    metadata: Mapping[str, str] | None = None,
    source: str = "LoRA file",
    widths: Mapping[str, int] | None = None,
) -> tuple[LoRAWeights, str]:
    """(weights by our module name, the layout found). widths: our Linears' output widths (from the DiT),
    needed only for diffusers files that leave out a part of a fused Linear."""
    layout = detect_layout(sd.keys(), source)
    maps = _maps(sd.keys())
    if layout == "default":
        return _read_default(sd, maps, source), layout
    if layout == "other":
        return _read_other(sd, maps, source), layout
    return _read_diffusers(sd, maps, source, metadata, widths), layout


# ---------------------------------------------------------------- writing


def to_default(weights: LoRAWeights, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Our layout (musubi-tuner's): `lora_unet_<module, . -> _>.<key>`; `prefix` does not apply to it."""
    out = {}
    for name, f in weights.items():
        for key, tensor in _keys(f, fold=False).items():
            out[f"{lora_name_for(name)}.{key}"] = tensor
    return out


def _keys(f: ModuleWeights, fold: bool) -> dict[str, torch.Tensor]:
    """One module's keys after its prefix. A LoRA as lora_down/lora_up + alpha, or (fold) as lora_A/lora_B with
    alpha / rank folded in; a LyCORIS module as it was read, alpha included (ComfyUI reads it there)."""
    if not isinstance(f, Factors):
        return f.tensors()
    if not fold:
        return {
            "lora_down.weight": f.down,
            "lora_up.weight": f.up,
            "alpha": torch.tensor(f.alpha, dtype=torch.float32),
        }
    down, up = _folded(f)
    return {"lora_A.weight": down, "lora_B.weight": up}


def _folded(f: Factors) -> tuple[torch.Tensor, torch.Tensor]:
    """A and B with alpha / rank folded in, sqrt into each (as musubi-tuner does): neither factor's range
    moves much, which matters in fp16 / bf16."""
    root = math.sqrt(f.scale)
    return (f.down.float() * root).to(f.down.dtype), (f.up.float() * root).to(f.up.dtype)


def to_other(weights: LoRAWeights, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """`<prefix>.<module>.<key>` (prefix: diffusion_model unless given), the layout ComfyUI loads whole."""
    out = {}
    for name, f in weights.items():
        for key, tensor in _keys(f, fold=True).items():
            out[f"{prefix or OTHER_PREFIX}.{name}.{key}"] = tensor
    return out


def to_diffusers(weights: LoRAWeights, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """diffusers' names; a fused Linear becomes one LoRA per part sharing A (the same update, same rank).
    prefix: transformer unless given (diffusers' load_lora_adapter(prefix=...))."""
    by_ours = {m.ours: m for m in _maps(weights)}
    out = {}
    for name, f in weights.items():
        if not isinstance(f, Factors):
            raise LoRAFileError(
                f"{name} is a {f.kind} module: diffusers' layout (PEFT's LoRA) cannot express it, and its "
                "q, k, v parts cannot be split from one Kronecker or Hadamard product; use --target other "
                "(ComfyUI) or default"
            )
        m = by_ours[name]
        down, up = _folded(f)
        if m.swap_halves:
            up = _swap(up)
        hidden = down.shape[1]
        sizes = [hidden] * (len(m.theirs) - 1) + [up.shape[0] - hidden * (len(m.theirs) - 1)]
        if sizes[-1] <= 0:
            raise LoRAFileError(
                f"{name}: output width {up.shape[0]} cannot be split into {', '.join(m.theirs)}"
            )
        for part, b in zip(m.theirs, up.split(sizes), strict=True):
            # safetensors refuses shared storage
            out[f"{prefix or DIFFUSERS_PREFIX}.{part}.lora_A.weight"] = down.clone()
            out[f"{prefix or DIFFUSERS_PREFIX}.{part}.lora_B.weight"] = b.contiguous()
    return out


WRITERS = {"default": to_default, "other": to_other, "diffusers": to_diffusers}
