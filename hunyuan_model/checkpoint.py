"""Reading a HunyuanVideo DiT from any layout users have, detected from the keys.

Layouts: the official `.pt` (`{"module": ...}` or a plain state dict, read with weights_only=True), safetensors in
the original layout (optionally with ComfyUI's `model.diffusion_model.` prefix), and diffusers'
`HunyuanVideoTransformer3DModel` (one file or a sharded folder), converted on load. Every failure is a
CheckpointError with one line that names the file.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
import struct
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar, cast

import torch
from safetensors import SafetensorError, safe_open

from hv_common.dtypes import safetensors_to_torch

from .config import PRESETS, DiTConfig
from .diffusers_layout import diffusers_to_original
from .errors import CheckpointError
from .fp8 import (
    COMFY_MARKER_KEYS,
    FLOAT8_DTYPES,
    INPUT_SCALE_KEYS,
    SCALE_KEY,
    all_finite,
    finite_flag,
    fp8_target_names,
    load_tensor,
    make_fp8,
    normalize_scale,
)
from .model import HYVideoDiffusionTransformer, build_dit
from .rope_source import log_if_derived, read_rope_split, rope_split

_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.", "module.", "model.")
_ORIGINAL_MARKER = "img_in.proj.weight"
_DIFFUSERS_MARKER = "x_embedder.proj.weight"
SAFETENSORS_DTYPES = safetensors_to_torch()  # the header's code -> torch dtype (hv_common/dtypes.py)

StateDict = dict[str, torch.Tensor]
_Value = TypeVar("_Value")
logger = logging.getLogger(__name__)


def _first_names(names, n: int = 3) -> str:
    names = sorted(names)
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (", ..." if len(names) > n else "")


# ---------------------------------------------------------------- reading files


def safetensors_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    indexes = sorted(path.glob("*.safetensors.index.json"))
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{indexes[0]}: not a valid safetensors index ({e})") from None
        files = sorted({path / name for name in weight_map.values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{path}: folder holds no .safetensors file")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise CheckpointError(f"{path}: shard listed in the index is missing: {missing[0].name}")
    return files


def _read_safetensors(path: Path, meta: bool, mmap: bool = True) -> StateDict:
    out: StateDict = {}
    for file in safetensors_files(path):
        if not mmap and not meta:
            out.update(_read_safetensors_plainly(file))
            continue
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                    if meta:
                        sl = f.get_slice(key)
                        dtype = SAFETENSORS_DTYPES.get(sl.get_dtype(), torch.float32)
                        out[key] = torch.empty(sl.get_shape(), dtype=dtype, device="meta")
                    else:
                        out[key] = f.get_tensor(key)
        except (SafetensorError, OSError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"{file}: not a readable safetensors file ({one_line(e)})") from None
    return out


def _read_safetensors_plainly(file: Path) -> StateDict:
    """The file read with plain reads, one tensor at a time into memory of its own: never memory-mapped
    (--disable_numpy_memmap; more RAM, and no mapping that keeps the file busy)."""
    out: StateDict = {}
    try:
        with open(file, "rb") as handle:
            (size,) = struct.unpack("<Q", handle.read(8))
            data_bytes = file.stat().st_size - 8 - size  # a hostile header must not make us allocate more
            if data_bytes < 0:
                raise ValueError(f"a header of {size} bytes is longer than the file")
            header = json.loads(handle.read(size))
            for key, entry in header.items():
                if key == "__metadata__":
                    continue
                start, end = entry["data_offsets"]
                if not 0 <= start <= end <= data_bytes:
                    raise ValueError(f"{key}: data offsets {start}-{end} outside the file")
                data = bytearray(end - start)
                handle.seek(8 + size + start)
                if handle.readinto(data) != len(data):
                    raise ValueError(f"{key}: the file ends inside its data")
                raw = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
                out[key] = raw.view(SAFETENSORS_DTYPES[entry["dtype"]]).reshape(entry["shape"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError, struct.error) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({one_line(e)})") from None
    return out


def read_torch_file(path: Path, mmap: bool = True) -> StateDict:
    def load(mmap: bool):
        # "Detected pickle protocol 4" would be a second stderr line that says nothing to the user
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes): not a PyTorch checkpoint")
    try:
        try:
            obj = load(mmap=mmap)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = load(mmap=False)  # legacy (non-zip) format cannot be memory-mapped
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"{path}: refusing to load: the file holds a Python object ({found.group(1)}), not only tensors "
                "(only weights_only=True loading is allowed; convert it to safetensors from a source you trust)"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_unpickler_reason(e)})") from None
    except (
        Exception
    ) as e:  # garbage bytes make the unpickler raise nearly anything (IndexError, KeyError, ...)
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({one_line(e)})") from None
    for wrapper in ("module", "state_dict"):  # DeepSpeed-style DiT files; the original VAE file
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors (found {type(obj).__name__})")
    return dict(obj)


def _unpickler_reason(e: BaseException) -> str:
    """torch's weights-only refusal, without its advice to retry with weights_only=False (never, here)."""
    text = " ".join(str(e).split())
    found = re.search(r"WeightsUnpickler error: (.*?)(?: Check the documentation|$)", text)
    if not found:
        return one_line(e)
    return f"the weights-only unpickler refused it: {found.group(1)[:200]}"


def one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:200] + ("..." if len(text) > 200 else "")


def read_state_dict(path: str | Path, meta: bool = False, mmap: bool = True) -> StateDict:
    """Raw tensors of a checkpoint, keys untouched. With meta=True only shapes and dtypes (headers); with
    mmap=False plain reads, the file never memory-mapped."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"DiT checkpoint not found: {path}")
    if path.is_dir() or path.suffix == ".safetensors":
        return _read_safetensors(path, meta, mmap)
    sd = read_torch_file(path, mmap=mmap or meta)  # shapes only: mapping reads nothing
    if meta:
        sd = {k: torch.empty(v.shape, dtype=v.dtype, device="meta") for k, v in sd.items()}
    return sd


# ---------------------------------------------------------------- layouts


def strip_prefix(sd: dict[str, _Value]) -> dict[str, _Value]:
    for prefix in _PREFIXES:
        if (prefix + _ORIGINAL_MARKER) in sd or (prefix + _DIFFUSERS_MARKER) in sd:
            return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def detect_layout(sd: Mapping[str, object]) -> str:
    """'original' or 'diffusers' (after prefix stripping); anything else is a CheckpointError."""
    if _ORIGINAL_MARKER in sd:
        return "original"
    if _DIFFUSERS_MARKER in sd:
        return "diffusers"
    first = next(iter(sorted(sd)), None)
    raise CheckpointError(f"not a HunyuanVideo DiT: {len(sd)} keys, first {first!r}")


def to_original_layout(sd: StateDict, source: str = "checkpoint") -> StateDict:
    """Strip known prefixes and convert diffusers names; the result uses the original checkpoint's keys."""
    sd = strip_prefix(sd)
    try:
        layout = detect_layout(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{source}: {e}") from None
    return diffusers_to_original(sd) if layout == "diffusers" else sd


# ---------------------------------------------------------------- config from shapes


def _depth(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return max((int(m.group(1)) + 1 for k in keys if (m := pattern.match(k))), default=0)


def config_from_state_dict(
    sd: Mapping[str, torch.Tensor], source: str = "checkpoint", rope: tuple[int, int, int] | None = None
) -> DiTConfig:
    """Derive the architecture from the original-layout keys and shapes; names a matching preset.

    rope: the RoPE split the file states (rope_source.read_rope_split); None derives it from the head width.
    """
    try:
        hidden, in_channels, *patch = sd["img_in.proj.weight"].shape
        head_dim = next(
            sd[k].shape[0]
            for k in ("double_blocks.0.img_attn_q_norm.weight", "single_blocks.0.q_norm.weight")
            if k in sd
        )
        if "double_blocks.0.img_mlp.fc1.weight" in sd:
            mlp_hidden = sd["double_blocks.0.img_mlp.fc1.weight"].shape[0]
        else:
            mlp_hidden = sd["single_blocks.0.linear1.weight"].shape[0] - 3 * hidden
        config = DiTConfig(
            in_channels=in_channels,
            out_channels=sd["final_layer.linear.weight"].shape[0] // math.prod(patch),
            patch_size=(patch[0], patch[1], patch[2]),
            hidden_size=hidden,
            heads_num=hidden // head_dim,
            mlp_width_ratio=mlp_hidden / hidden,
            mm_double_blocks_depth=_depth(sd, "double_blocks"),
            mm_single_blocks_depth=_depth(sd, "single_blocks"),
            rope_dim_list=rope_split(head_dim, rope, source),
            text_states_dim=sd["txt_in.input_embedder.weight"].shape[1],
            text_states_dim_2=sd["vector_in.in_layer.weight"].shape[1],
            refiner_depth=_depth(sd, "txt_in.individual_token_refiner.blocks"),
            guidance_embed="guidance_in.mlp.0.weight" in sd,
        )
    except CheckpointError:
        raise
    except (KeyError, StopIteration, ValueError, TypeError) as e:
        missing = f"missing {e}" if isinstance(e, KeyError) else one_line(e)
        raise CheckpointError(f"{source}: incomplete HunyuanVideo DiT ({missing})") from None
    for preset in PRESETS.values():
        if config.same_shape_as(preset):
            return preset
    return config


def read_dit_config(path: str | Path) -> DiTConfig:
    """The architecture of a DiT file from its headers only: no weights are read."""
    sd = to_original_layout(read_state_dict(path, meta=True), str(path))
    return config_from_state_dict(sd, str(path), read_rope_split(path))


# ---------------------------------------------------------------- loading


def check_keys(model: torch.nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = expected.keys() - sd.keys()
    unexpected = sd.keys() - expected.keys()
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_first_names(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_first_names(unexpected)})")
        raise CheckpointError(f"{source}: does not match the DiT it describes: {'; '.join(parts)}")
    # int or bool tensors where the model has floats: they would load and fail (or mislead) much later
    not_float = [k for k, v in expected.items() if v.is_floating_point() and not sd[k].is_floating_point()]
    if not_float:
        k = not_float[0]
        raise CheckpointError(
            f"{source}: {len(not_float)} tensors of a non-float dtype, first {k!r}: {sd[k].dtype} where "
            "floating-point weights are expected"
        )
    wrong = [k for k, v in expected.items() if tuple(sd[k].shape) != tuple(v.shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{source}: {len(wrong)} tensors of the wrong shape, first {k!r}: "
            f"{tuple(sd[k].shape)} where {tuple(expected[k].shape)} is expected"
        )


def pop_fp8_scales(sd: StateDict, source: str) -> dict[str, torch.Tensor]:
    """Take scaled-fp8 files' `<linear>.scale_weight` keys (and ComfyUI's marker) out of sd: {linear: scale}.
    Activation scales (`<linear>.scale_input`, for fp8 matmuls we do not use) are dropped."""
    for marker in COMFY_MARKER_KEYS:
        sd.pop(marker, None)
    for key in [k for k in sd if k.rpartition(".")[2] in INPUT_SCALE_KEYS]:
        if f"{key.rpartition('.')[0]}.weight" in sd:
            del sd[key]
    scales = {}
    for key in [k for k in sd if k.endswith("." + SCALE_KEY)]:
        name, scale = key.removesuffix("." + SCALE_KEY), sd.pop(key)
        weight = sd.get(f"{name}.weight")
        normal = None if weight is None or weight.dim() != 2 else normalize_scale(scale, weight.shape[0])
        if normal is None:
            raise CheckpointError(
                f"{source}: {key!r} of shape {tuple(scale.shape)} is no scale of a Linear weight in this file "
                "(a scalar or one value per output row is expected)"
            )
        scales[name] = normal
    return scales


def load_dit(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    config: DiTConfig | None = None,
    *,
    fp8_base: bool = False,
    fp8_scaled: bool = False,
    work_device: torch.device | str | None = None,
    mmap: bool = True,
) -> HYVideoDiffusionTransformer:
    """Load a DiT of any supported layout. Built on the meta device, weights assigned: no random init ever.

    dtype converts floating-point weights while loading (None keeps the file's dtype; float8 becomes bfloat16).
    fp8_base / fp8_scaled (which implies fp8 storage) keep the block Linears' weights in float8_e4m3fn (see
    hunyuan_model/fp8.py), per-row scaled with fp8_scaled; each is converted on `work_device` (default: `device`;
    a GPU when the model loads into CPU memory for block swap) one tensor at a time, then moved to `device`.
    A file stored in float8 (with or without `scale_weight` keys) loads as it is under either flag, and is
    upcast (scale applied) without them. NaN/Inf weights are a CheckpointError naming the first bad key.
    """
    source = str(path)
    device = torch.device(device)
    work_device = device if work_device is None else torch.device(work_device)
    sd = to_original_layout(read_state_dict(path, mmap=mmap), source)  # mmap=False: --disable_numpy_memmap
    scales = pop_fp8_scales(sd, source)
    stated = read_rope_split(path)
    derived_config = config is None
    config = config or config_from_state_dict(sd, source, stated)
    model = build_dit(config, device="meta")
    check_keys(model, sd, source)
    targets = set(fp8_target_names(model)) if fp8_base or fp8_scaled else set()
    kept_scales: dict[str, torch.Tensor | None] = {}
    checked: list[tuple[str, torch.Tensor | bool]] = []  # (key, "finite" flag: on the device, or known)
    upcast = 0
    for key in list(sd):
        value = sd.pop(key)  # dropped as soon as converted: one source tensor in hand at a time
        if value.is_floating_point():
            name, _, leaf = key.rpartition(".")
            target = leaf == "weight" and name in targets
            scale = scales.get(name) if leaf == "weight" else None
            # Quantize on an accelerator, where it is ~100x faster than a CPU (minutes for 13 B there): one
            # source tensor at a time is on the device, so a full 16-bit copy of the model never is.
            on_device = target and work_device.type != "cpu" and value.dtype not in FLOAT8_DTYPES
            if on_device:
                value = value.to(work_device)
            converted, scale = load_tensor(value, scale, target, fp8_scaled, dtype)
            upcast += value.dtype in FLOAT8_DTYPES and converted.dtype not in FLOAT8_DTYPES
            if target and converted.dtype != value.dtype:
                # Quantizing clamps an Inf away: check the weight as the file has it, now (exact on the device;
                # on the CPU the quick sum first).
                exact = (
                    bool(all_finite(value))
                    if on_device
                    else bool(finite_flag(value)) or bool(all_finite(value))
                )
                checked.append((key, exact))
                value = converted.to(device)
            else:
                value = converted.to(device)
                checked.append((key, finite_flag(value)))
            if target:
                kept_scales[name] = None if scale is None else scale.to(device)
        sd[key] = value.to(device)  # non-floating tensors (none in a DiT today) move as they are
    _check_finite(checked, sd, source)
    if upcast:
        logger.info(
            "%s: %d float8 tensors upcast to the compute dtype (scales applied); --fp8_base / --fp8 keep them",
            source,
            upcast,
        )
    model.load_state_dict(sd, strict=True, assign=True)
    if derived_config:
        log_if_derived(config.head_dim, stated, source)
    for name, scale in kept_scales.items():
        linear = cast(torch.nn.Linear, model.get_submodule(name))  # a name of fp8_target_names
        linear.weight.requires_grad_(False)  # float8 is frozen base weight, never trained
        make_fp8(linear, scale)
    return model


def _check_finite(checked: list[tuple[str, torch.Tensor | bool]], sd: StateDict, source: str) -> None:
    """One device sync for the whole model (flags gathered while loading); the first bad key is named.

    A False device flag is confirmed with the exact check (the quick one also fails on a sum that overflows).
    """
    device_flags = [flag for _, flag in checked if isinstance(flag, torch.Tensor)]
    if all(flag for _, flag in checked if isinstance(flag, bool)) and (
        not device_flags or bool(torch.stack(device_flags).all())
    ):
        return
    for key, flag in checked:
        ok = flag if isinstance(flag, bool) else bool(flag) or bool(all_finite(sd[key]))
        if not ok:
            raise CheckpointError(
                f"{source}: weight {key!r} holds NaN or Inf values (a corrupt or diverged file)"
            )
