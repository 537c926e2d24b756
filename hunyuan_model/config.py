"""DiT configurations: named presets in one place, and the rule that derives RoPE axes from a head width."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The modules a LoRA may wrap, and the ones it never wraps unless a user rescues them (see networks/).
TARGET_BLOCK_CLASSES: tuple[str, ...] = ("MMDoubleStreamBlock", "MMSingleStreamBlock")
DEFAULT_EXCLUDE_PATTERNS: tuple[str, ...] = (r".*(img_mod|txt_mod|modulation).*",)


@dataclass(frozen=True)
class DiTConfig:
    """Everything that shapes a HunyuanVideo DiT. Names follow the original code (HYVideo-T/2)."""

    name: str = "custom"
    in_channels: int = 16
    out_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    hidden_size: int = 3072
    heads_num: int = 24
    mlp_width_ratio: float = 4.0
    mm_double_blocks_depth: int = 20
    mm_single_blocks_depth: int = 40
    rope_dim_list: tuple[int, int, int] = (16, 56, 56)
    rope_theta: float = 256.0
    text_states_dim: int = 4096  # LLM hidden states (llava-llama-3-8b)
    text_states_dim_2: int = 768  # CLIP-L pooled vector
    refiner_depth: int = 2
    guidance_embed: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.heads_num:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by heads_num {self.heads_num}")
        if sum(self.rope_dim_list) != self.head_dim or any(d % 2 for d in self.rope_dim_list):
            raise ValueError(
                f"rope_dim_list {self.rope_dim_list} must be even and sum to the head width {self.head_dim}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.heads_num

    @property
    def mlp_hidden_dim(self) -> int:
        return int(self.hidden_size * self.mlp_width_ratio)

    def same_shape_as(self, other: DiTConfig) -> bool:
        """Equal in everything but the name."""
        return dataclasses.replace(self, name="") == dataclasses.replace(other, name="")


def rope_dims_for(head_dim: int) -> tuple[int, int, int]:
    """HunyuanVideo splits a 128-wide head as (16, 56, 56): 1/8 for time, the rest halved for h and w.

    Checkpoints do not store this split, so other widths follow the same rule (rounded to even sizes).
    """
    t = max(2, (head_dim // 8) // 2 * 2)
    hw = (head_dim - t) // 2 // 2 * 2
    t = head_dim - 2 * hw
    return (t, hw, hw)


PRESETS: dict[str, DiTConfig] = {
    "hunyuan-video-t2v-720p": DiTConfig(name="hunyuan-video-t2v-720p"),
    # Small enough to train on a CPU in seconds; same structure, every module name of the real model.
    "tiny": DiTConfig(
        name="tiny",
        hidden_size=64,
        heads_num=2,
        mm_double_blocks_depth=2,
        mm_single_blocks_depth=2,
        rope_dim_list=rope_dims_for(32),
        text_states_dim=32,
        text_states_dim_2=32,
        refiner_depth=1,
    ),
}


def get_preset(name: str) -> DiTConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown DiT preset {name!r}; known: {', '.join(PRESETS)}") from None
