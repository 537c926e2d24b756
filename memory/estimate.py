"""GPU memory of one training step, estimated before anything loads (--estimate_memory, --vram_budget_gb).

Pure arithmetic on shapes: the DiT and the LoRA network are built on the meta device (as --list_lora_targets
does), the architecture comes from the config preset or the headers of --dit, the workload from the largest
bucket of the dataset config. No weight, VAE or text encoder is read.

What is counted, and how it was checked (tests/memory/test_estimate.py, CPU):
- weights: per-tensor bytes; fp8 (--fp8_base) stores the 2-D weight of every block Linear except modulation in
  1 byte, --fp8_scaled adds an fp32 scale per output row; with --blocks_to_swap N the last N blocks (double
  then single) live in CPU memory and the GPU holds at most two of them (the running and the prefetched one).
  Exact against the built model.
- LoRA weights, gradients and optimizer state: exact against a model after one AdamW step.
- saved activations: op by op (see `_double_block_bytes` / `_single_block_bytes`), checked against the tensors
  autograd saves (saved_tensors_hooks, deduplicated by storage) on the tiny model.
- not checkable on a CPU, so stated, not measured: the backward transients, the attention workspace (we
  assume a memory-efficient/flash SDPA kernel: no tokens x tokens matrix), CUDA autocast keeping LayerNorm
  inputs in fp32, and the fixed CUDA context/allocator overhead.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from hunyuan_model.fp8 import is_fp8_weight  # the loader's rule: what --fp8_base stores in 1 byte
from hv_common.dtypes import OPTION_BYTES
from hv_common.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from networks.options import NetworkOptions

logger = logging.getLogger(__name__)

GIB = 1024**3
# The CUDA context (~0.3-0.6 GiB with lazy module loading, more on older drivers) and cuBLAS/cuDNN workspaces
# live outside PyTorch's allocator; the caching allocator also rounds and keeps freed blocks. 1 GiB covers the
# context on current drivers with room for the small-block slack; max_memory_allocated() never sees it.
CUDA_OVERHEAD_BYTES = 1 * GIB
ALLOCATOR_SLACK = 0.05  # of what PyTorch allocates: freed blocks the caching allocator keeps (fragments)
LLM_TEXT_TOKENS = 256  # hunyuan_model.text_encoders.LLM_MAX_TOKENS: cached LLM states are at most this long
VAE_TIME_STRIDE, VAE_SPACE_STRIDE = 4, 8
DTYPE_BYTES = OPTION_BYTES  # --dit_dtype's names -> bytes per element (hv_common/dtypes.py)
COMMON_CARDS_GB = (12, 16, 24, 48, 80)


@dataclass(frozen=True)
class Workload:
    """One training batch: the largest bucket (width x height x frames) and its batch size."""

    width: int
    height: int
    frames: int
    batch_size: int = 1
    text_tokens: int = LLM_TEXT_TOKENS

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // VAE_TIME_STRIDE + 1

    def image_tokens(self, patch_size: Sequence[int] = (1, 2, 2)) -> int:
        pt, ph, pw = patch_size
        lat_h, lat_w = self.height // VAE_SPACE_STRIDE, self.width // VAE_SPACE_STRIDE
        return (self.latent_frames // pt) * (lat_h // ph) * (lat_w // pw)

    def describe(self) -> str:
        return f"{self.batch_size} x {self.frames} frames x {self.width}x{self.height}"


@dataclass(frozen=True)
class Settings:
    """How the DiT is stored and run. Bytes per element, so that this module needs no torch dtypes."""

    weight_bytes: int = 2  # --dit_dtype (bf16 on a GPU unless set)
    act_bytes: int = 2  # activations: the autocast dtype, else the DiT dtype
    autocast: bool = True  # CUDA autocast keeps LayerNorm inputs in fp32
    fp8_base: bool = False
    fp8_scaled: bool = False
    blocks_to_swap: int = 0
    gradient_checkpointing: bool = False
    checkpoint_cpu_offload: bool = False
    split_attn: bool = False
    optimizer: str = "AdamW"
    lora_bytes: int = 4  # LoRA weights and gradients are fp32


@dataclass(frozen=True)
class LoRAInfo:
    """The wrapped Linears as (module name, in, out, rank), as --network_module selects them."""

    modules: tuple[tuple[str, int, int, int], ...]
    trainable: int | None = None  # the network's own count where it is not LoRA's r * (in + out)
    full_delta: bool = False  # LoHa / LoKr: each module builds its (out, in) update and keeps it for backward

    @property
    def params(self) -> int:
        return (
            self.trainable if self.trainable is not None else sum(r * (i + o) for _, i, o, r in self.modules)
        )

    def in_block(self, prefix: str) -> list[tuple[str, int, int, int]]:
        return [m for m in self.modules if m[0].startswith(prefix)]


@dataclass
class MemoryEstimate:
    """Bytes per component (in print order), with the assumptions worth telling the user."""

    components: dict[str, int]
    notes: list[str] = field(default_factory=list)
    header: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.components.values())

    @property
    def allocated(self) -> int:
        """What torch.cuda.max_memory_allocated() should show: the total less context and allocator slack."""
        return self.total - self.components.get(OVERHEAD, 0)


OVERHEAD = "CUDA context + allocator slack"


def gib(n: int) -> float:
    return n / GIB


# ---------------------------------------------------------------- weights


def tensor_bytes(name: str, shape: Sequence[int], settings: Settings) -> int:
    numel = math.prod(shape)
    if (settings.fp8_base or settings.fp8_scaled) and is_fp8_weight(name, shape):
        return numel + (4 * shape[0] if settings.fp8_scaled else 0)
    return numel * settings.weight_bytes


def dit_shapes(model) -> dict[str, tuple[int, ...]]:
    """Every parameter and buffer of a (meta) DiT by state-dict name."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def block_names(config) -> list[str]:
    """The swap order: double blocks, then single blocks (the last N of this list are swapped)."""
    return [f"double_blocks.{i}." for i in range(config.mm_double_blocks_depth)] + [
        f"single_blocks.{i}." for i in range(config.mm_single_blocks_depth)
    ]


def weight_bytes_by_block(
    shapes: dict[str, tuple[int, ...]], config, settings: Settings
) -> tuple[int, list[int]]:
    """(bytes outside the blocks, bytes of each block in swap order)."""
    blocks = block_names(config)
    per_block = dict.fromkeys(blocks, 0)
    other = 0
    for name, shape in shapes.items():
        prefix = ".".join(name.split(".")[:2]) + "."
        if prefix in per_block:
            per_block[prefix] += tensor_bytes(name, shape, settings)
        else:
            other += tensor_bytes(name, shape, settings)
    return other, [per_block[b] for b in blocks]


def max_blocks_to_swap(config) -> int:
    return config.mm_double_blocks_depth + config.mm_single_blocks_depth - 2


def resident_weight_bytes(other: int, blocks: Sequence[int], n_swap: int) -> tuple[int, int]:
    """(weights resident on the GPU, buffers for the swapped blocks in flight: at most two at once)."""
    kept = list(blocks[: len(blocks) - n_swap])
    swapped = sorted(blocks[len(blocks) - n_swap :], reverse=True)
    return other + sum(kept), sum(swapped[:2])


# ---------------------------------------------------------------- LoRA and optimizer


def lora_info(model: nn.Module, network_options: NetworkOptions) -> LoRAInfo:
    """The selection of --network_module / --network_dim / --network_args on a meta model (no weights)."""
    from hunyuan_model.config import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES
    from networks.build import build_network
    from networks.lora import LoRANetwork

    network = build_network(
        network_options,
        model,
        "meta",
        target_block_classes=TARGET_BLOCK_CLASSES,
        default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
    )
    targets = network.targets()
    is_lora = isinstance(network, LoRANetwork)
    return LoRAInfo(
        tuple((t.name, t.in_features, t.out_features, t.dim) for t in targets),
        trainable=None if is_lora else sum(t.params for t in targets),
        full_delta=network.full_delta,
    )


def lora_weight_bytes(lora: LoRAInfo, settings: Settings) -> int:
    """lora_down + lora_up weights, plus each module's 0-d fp32 `alpha` buffer."""
    return lora.params * settings.lora_bytes + 4 * len(lora.modules)


def optimizer_state_bytes(lora: LoRAInfo, settings: Settings) -> tuple[int, str]:
    """(bytes on the GPU, what was assumed). Step counters are host tensors (torch's default, non-fused)."""
    name = settings.optimizer.lower().rsplit(".", 1)[-1]
    if name == "adamw":
        return 2 * lora.params * settings.lora_bytes, "AdamW: 2 states of the LoRA dtype"
    if name == "adamw8bit":
        return 2 * lora.params, "AdamW8bit: 2 x 1 byte"
    if name == "adafactor":  # factored second moment: one row and one column vector per matrix, no momentum
        return sum(4 * (r + i) + 4 * (o + r) for _, i, o, r in lora.modules), "Adafactor: factored, fp32"
    return 2 * lora.params * settings.lora_bytes, f"{settings.optimizer}: unknown, assumed AdamW (2 states)"


# ---------------------------------------------------------------- activations


def _wrapped(lora: LoRAInfo, prefix: str) -> dict[str, int]:
    """{short Linear name: rank} of the LoRA modules inside one block."""
    return {name[len(prefix) :]: r for name, _, _, r in lora.in_block(prefix)}


def _lora_extras(lora: LoRAInfo, prefix: str, tokens: dict[str, int], s: Settings) -> int:
    """Each wrapped Linear saves its rank-r activation; LoRA weights cast to a lower dtype are saved too."""
    total = 0
    for name, i, o, r in lora.in_block(prefix):
        if lora.full_delta:  # F.linear(x, ΔW) keeps ΔW (x is the block's, already counted)
            total += o * i * s.act_bytes
            continue
        stream = name[len(prefix) :].split("_")[0]
        total += tokens.get(stream, tokens["all"]) * r * s.act_bytes
        if s.act_bytes != s.lora_bytes:
            total += r * (i + o) * s.act_bytes
    return total


def _double_block_bytes(cfg, n_img: int, n_txt: int, wrapped: dict[str, int], s: Settings) -> int:
    """Tensors one MMDoubleStreamBlock saves for backward (per token: bytes), per stream:
    norm1 input (fp32 under autocast) + its mean/rstd; the modulated input if qkv has a LoRA; q and k in fp32
    for the RMS norms (in an fp32 model they are views of the whole qkv output); rsqrt per head; the
    attention's q, k, v, output and log-sum-exp; norm2 input; the MLP input if fc1 has a LoRA; the fc1 output
    (GELU); the GELU output if fc2 has a LoRA."""
    h, m, heads, b = cfg.hidden_size, cfg.mlp_hidden_dim, cfg.heads_num, s.act_bytes
    ln = 4 if s.autocast and b < 4 else b
    per_stream = {}
    for stream in ("img", "txt"):
        t = 2 * (h * ln + 8)  # norm1 and norm2 inputs + fp32 mean/rstd
        t += h * b * (f"{stream}_attn_qkv" in wrapped) + h * b * (f"{stream}_mlp.fc1" in wrapped)
        t += (3 * h * b if b == 4 else 2 * h * 4) + 2 * heads * 4
        t += 4 * h * b + heads * 4  # attention q, k, v, out, lse (joint, per token of this stream)
        t += m * b + m * b * (f"{stream}_mlp.fc2" in wrapped)
        per_stream[stream] = t
    return per_stream["img"] * n_img + per_stream["txt"] * n_txt


def _single_block_bytes(cfg, n: int, wrapped: dict[str, int], s: Settings) -> int:
    """MMSingleStreamBlock, per token: pre_norm input + mean/rstd; modulated input if linear1 has a LoRA; the
    fused linear1 output (GELU and v keep it); q and k in fp32 (unless the model is fp32: views then); rsqrt;
    roped q and k, attention output, lse; the linear2 input (attention + MLP) if linear2 has a LoRA."""
    h, m, heads, b = cfg.hidden_size, cfg.mlp_hidden_dim, cfg.heads_num, s.act_bytes
    ln = 4 if s.autocast and b < 4 else b
    t = h * ln + 8 + h * b * ("linear1" in wrapped) + (3 * h + m) * b
    t += (0 if b == 4 else 2 * h * 4) + 2 * heads * 4
    t += 3 * h * b + heads * 4 + (h + m) * b * ("linear2" in wrapped)
    return t * n


@dataclass(frozen=True)
class Activations:
    saved: int  # held from the forward to the backward
    recompute: int  # one block's internals, rebuilt during backward (checkpointing only)
    transients: int  # gradients and attention workspace of the block in backward
    batch: int  # latents, noise, noisy input, target, prediction (fp32): alive for the step, small


def activation_bytes(cfg, work: Workload, lora: LoRAInfo, s: Settings) -> Activations:
    B, b = work.batch_size, s.act_bytes
    n_img = work.image_tokens(cfg.patch_size)
    n_txt, h, m = work.text_tokens, cfg.hidden_size, cfg.mlp_hidden_dim
    n = n_img + n_txt
    tokens = {"img": B * n_img, "txt": B * n_txt, "all": B * n}
    internals, grad_needed = [], False
    for prefix in block_names(cfg):
        wrapped = _wrapped(lora, prefix)
        grad_needed = grad_needed or bool(wrapped)  # blocks before the first LoRA need no grad
        if not grad_needed:
            internals.append(0)
            continue
        if prefix.startswith("double"):
            body = _double_block_bytes(cfg, B * n_img, B * n_txt, wrapped, s)
        else:
            body = _single_block_bytes(cfg, B * n, wrapped, s)
        internals.append(body + _lora_extras(lora, prefix, tokens, s))
    # outside the blocks: the final layer's norm input and the rope tables (cos, sin: fp32)
    other = B * n * h * b + n_img * cfg.head_dim * 4 * 2
    batch = 5 * B * cfg.in_channels * work.latent_frames * (work.height // 8) * (work.width // 8) * 4
    inputs = 0 if s.checkpoint_cpu_offload else len(internals) * B * n * h * b
    # backward of one block: grads of the widest tensors (fused linear1 output and linear2 input) and the
    # attention's grad q/k/v, an fp32 grad-q accumulator and its per-row delta (memory-efficient kernels)
    attn_rows = 1 if s.split_attn else B
    transients = B * n * (4 * h + 2 * m) * b + attn_rows * n * (3 * h * b + h * 4 + cfg.heads_num * 4)
    if s.gradient_checkpointing:
        return Activations(inputs + other, max(internals), transients, batch)
    return Activations(sum(internals) + other, 0, transients, batch)


# ---------------------------------------------------------------- the estimate


def estimate(cfg, shapes: dict, lora: LoRAInfo, work: Workload, s: Settings) -> MemoryEstimate:
    limit = max_blocks_to_swap(cfg)
    if not 0 <= s.blocks_to_swap <= limit:
        raise UserError(f"--blocks_to_swap {s.blocks_to_swap}: expected 0 to {limit} for this DiT")
    other, blocks = weight_bytes_by_block(shapes, cfg, s)
    resident, buffers = resident_weight_bytes(other, blocks, s.blocks_to_swap)
    opt, opt_note = optimizer_state_bytes(lora, s)
    act = activation_bytes(cfg, work, lora, s)
    lora_w = lora_weight_bytes(lora, s)
    comps = {
        "DiT weights (resident)": resident,
        f"swapped-block buffers (2 of {s.blocks_to_swap})": buffers,
        f"LoRA weights ({len(lora.modules)} modules)": lora_w,
        "LoRA gradients": lora.params * s.lora_bytes,
        f"optimizer state ({opt_note.split(':')[0]})": opt,
        "activations saved for backward": act.saved,
        "recomputed block (checkpointing)": act.recompute,
        "backward transients + attention": act.transients,
        "batch tensors (latents, noise, target)": act.batch,
    }
    comps[OVERHEAD] = CUDA_OVERHEAD_BYTES + int(ALLOCATOR_SLACK * sum(comps.values()))
    tokens = work.image_tokens(cfg.patch_size) + work.text_tokens
    math_kernel = work.batch_size * cfg.heads_num * tokens**2 * s.act_bytes
    notes = [
        opt_note,
        "attention: a memory-efficient/flash SDPA kernel is assumed (the math kernel would add "
        f"{gib(math_kernel):.1f} GiB per block)",
    ]
    return MemoryEstimate(comps, notes)


def smallest_blocks_to_swap(
    cfg, shapes: dict, lora: LoRAInfo, work: Workload, s: Settings, budget_gb: float
) -> int | None:
    """The smallest --blocks_to_swap whose estimate fits `budget_gb` GiB; None if even the maximum does not.

    Not monotonic in N (swapping 1 or 2 blocks saves nothing: they need their two buffers; the first swapped
    double block needs a bigger buffer), so every N is tried in order.
    """
    from dataclasses import replace

    budget = budget_gb * GIB
    for n in range(max_blocks_to_swap(cfg) + 1):
        if estimate(cfg, shapes, lora, work, replace(s, blocks_to_swap=n)).total <= budget:
            return n
    return None


# ---------------------------------------------------------------- for GPU benchmarks


def compare_with_cuda(est: MemoryEstimate, device=None) -> dict[str, float]:
    """Estimate vs torch.cuda.max_memory_allocated() after a step (call reset_peak_memory_stats before it).

    The context/slack line is left out: PyTorch's allocator never counts it. ratio > 1: the estimate is high.
    """
    import torch

    measured = torch.cuda.max_memory_allocated(device)
    return {
        "estimated_allocated_gib": gib(est.allocated),
        "measured_max_allocated_gib": gib(measured),
        "ratio": est.allocated / measured if measured else float("inf"),
    }
