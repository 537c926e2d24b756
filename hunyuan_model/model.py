"""HYVideoDiffusionTransformer: the HunyuanVideo DiT with the module names of the original checkpoints."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .block_swap import BlockSwapper, check_blocks_to_swap
from .blocks import MMDoubleStreamBlock, MMSingleStreamBlock
from .config import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES, DiTConfig
from .layers import FinalLayer, MLPEmbedder, PatchEmbed, TimestepEmbedder
from .rope import rope_freqs
from .token_refiner import SingleTokenRefiner

__all__ = [
    "DEFAULT_EXCLUDE_PATTERNS",
    "TARGET_BLOCK_CLASSES",
    "HYVideoDiffusionTransformer",
    "MMDoubleStreamBlock",
    "MMSingleStreamBlock",
    "build_dit",
]


class HYVideoDiffusionTransformer(nn.Module):
    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        hidden, heads, ratio = config.hidden_size, config.heads_num, config.mlp_width_ratio
        self.img_in = PatchEmbed(config.patch_size, config.in_channels, hidden)
        self.txt_in = SingleTokenRefiner(config.text_states_dim, hidden, heads, config.refiner_depth, ratio)
        self.time_in = TimestepEmbedder(hidden)
        self.vector_in = MLPEmbedder(config.text_states_dim_2, hidden)
        self.guidance_in = TimestepEmbedder(hidden) if config.guidance_embed else None
        self.double_blocks = nn.ModuleList(
            MMDoubleStreamBlock(hidden, heads, ratio) for _ in range(config.mm_double_blocks_depth)
        )
        self.single_blocks = nn.ModuleList(
            MMSingleStreamBlock(hidden, heads, ratio) for _ in range(config.mm_single_blocks_depth)
        )
        self.final_layer = FinalLayer(hidden, math.prod(config.patch_size), config.out_channels)
        self.gradient_checkpointing = False
        self.gradient_checkpointing_cpu_offload = False
        self._block_swap: BlockSwapper | None = None
        self.img_in_txt_in_offloading = False

    def enable_gradient_checkpointing(self, enabled: bool = True, cpu_offload: bool = False) -> None:
        """Recompute each block in backward. cpu_offload: the block inputs checkpointing keeps are held in CPU
        memory (pinned on CUDA) and copied back for the recompute: less device memory, one round trip each."""
        if cpu_offload and not enabled:
            raise ValueError("gradient checkpointing CPU offload needs gradient checkpointing")
        self.gradient_checkpointing = enabled
        self.gradient_checkpointing_cpu_offload = cpu_offload

    def enable_img_in_txt_in_offloading(self) -> None:
        """--img_in_txt_in_offloading: img_in and txt_in (the token refiner) live in CPU memory (pinned when a
        GPU is there) and are copied to the input's device just before they run, each forward; nothing is
        copied back (their weights are frozen: the CPU copy stays the master). Call after block swap, which
        moves everything else to the device."""
        pin = torch.cuda.is_available()
        for t in self._embedder_tensors():
            cpu = t.data.to("cpu")
            t.data = cpu.pin_memory() if pin else cpu
        self.img_in_txt_in_offloading = True

    def _embedder_tensors(self) -> list[torch.Tensor]:
        modules = (self.img_in, self.txt_in)
        return [t for m in modules for t in [*m.parameters(), *m.buffers()]]

    @contextlib.contextmanager
    def _embedders_on(self, device: torch.device):
        """img_in and txt_in on `device` for the block inside (with --img_in_txt_in_offloading), then their data
        points back at the CPU masters: the device copies are freed, nothing goes device -> host."""
        if not self.img_in_txt_in_offloading:
            yield
            return
        moved = [(t, t.data) for t in self._embedder_tensors()]
        for (
            t,
            master,
        ) in moved:  # a copy also on a CPU device, so that the schedule runs (and is tested) there
            t.data = master.to(device, copy=True, non_blocking=True)
        try:
            yield
        finally:
            for t, master in moved:
                t.data = master

    def blocks(self) -> list[nn.Module]:
        """Double blocks then single blocks: the one sequence block swap counts in."""
        return [*self.double_blocks, *self.single_blocks]

    def enable_block_swap(
        self, n: int, device: torch.device | str, pin_memory: bool = False
    ) -> BlockSwapper | None:
        """Keep the last n blocks (of `blocks()`) in CPU memory, everything else on `device`; 0 turns it off.

        The model's weights must be frozen. pin_memory: the CPU copies pinned (--use_pinned_memory_for_block_swap).
        See block_swap.py for the schedule; returns the swapper (its
        `stats` count the host->device traffic).
        """
        blocks = self.blocks()
        check_blocks_to_swap(n, len(blocks))
        self.disable_block_swap()
        if n == 0:
            return None
        swapper = BlockSwapper(blocks, n, device, pin_memory)  # swapped tensors leave for CPU memory first
        target = swapper.device
        for t in [*self.parameters(), *self.buffers()]:
            if t.device != target:
                t.data = t.data.to(target)
        self._block_swap = swapper
        return swapper

    def disable_block_swap(self) -> None:
        """Every block back on the swap device for good."""
        if self._block_swap is not None:
            self._block_swap.restore()
            self._block_swap = None

    @property
    def block_swap(self) -> BlockSwapper | None:
        return self._block_swap

    def compile_blocks(
        self,
        backend: str = "inductor",
        mode: str | None = None,
        dynamic: bool | None = None,
        fullgraph: bool = False,
    ) -> None:
        """torch.compile each block in place (nn.Module.compile): module names and state-dict keys stay."""
        for block in self.blocks():
            block.compile(
                backend=backend,
                mode=None if mode == "default" else mode,
                dynamic=dynamic,
                fullgraph=fullgraph,
            )

    def compile_whole(self, kwargs: dict) -> None:
        """torch.compile the whole forward in place (nn.Module.compile), with torch.compile's keyword arguments
        (backend, mode, fullgraph, dynamic): what accelerate's TorchDynamoPlugin does to a prepared model, but
        names and state-dict keys stay. An unknown or uninstalled backend is one line."""
        from hv_common.errors import UserError

        try:
            self.compile(**kwargs)
        except torch._dynamo.exc.InvalidBackend:
            known = ", ".join(torch._dynamo.list_backends())
            raise UserError(
                f"--dynamo_backend {kwargs.get('backend')}: not available here; known: {known}"
            ) from None

    def _run(self, index: int, block: nn.Module, *args):
        swap = self._block_swap
        if swap is not None:
            swap.before_forward(index)
        if self.gradient_checkpointing and torch.is_grad_enabled():
            with self._checkpoint_offload():
                out = checkpoint(block, *args, use_reentrant=False)
        elif swap is not None and swap.is_swapped(index) and torch.is_grad_enabled():
            with swap.saving_weights_by_reference(index):
                out = block(*args)
        else:
            out = block(*args)
        if swap is not None:
            swap.after_forward(index)
            out = swap.mark_backward(index, out)
        return out

    def _checkpoint_offload(self):
        if not self.gradient_checkpointing_cpu_offload:
            return contextlib.nullcontext()
        # checkpoint keeps its inputs as saved tensors, so they pass through these hooks (a test checks it)
        return torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        text_states_2: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, C, T, H, W) latents; t: (B,) timesteps in [0, 1000]; text_states: (B, L, text_states_dim)
        LLM states with text_mask (B, L); text_states_2: (B, text_states_dim_2) pooled CLIP; guidance:
        (B,) embedded guidance scale x 1000 (required when the model has a guidance embedding).
        Returns the prediction with x's shape.
        """
        cfg = self.config
        pt, ph, pw = cfg.patch_size
        grid = (x.shape[2] // pt, x.shape[3] // ph, x.shape[4] // pw)
        rope = rope_freqs(grid, cfg.rope_dim_list, cfg.rope_theta, x.device)

        vec = self.time_in(t) + self.vector_in(text_states_2)
        if self.guidance_in is not None:
            if guidance is None:
                raise ValueError("this DiT has a guidance embedding: pass guidance (embedded scale x 1000)")
            vec = vec + self.guidance_in(guidance)

        with self._embedders_on(x.device):
            img = self.img_in(x)
            txt = self.txt_in(text_states, t, text_mask)
        txt, text_mask = self._drop_padding_of_one(txt, text_mask)
        img_len = img.shape[1]
        attn_mask = self._joint_mask(text_mask, img_len, img.device)

        if self._block_swap is not None:
            self._block_swap.begin_forward()
        for i, block in enumerate(self.double_blocks):
            img, txt = self._run(i, block, img, txt, vec, attn_mask, rope)
        tokens = torch.cat([img, txt], dim=1)
        for i, block in enumerate(self.single_blocks, start=len(self.double_blocks)):
            tokens = self._run(i, block, tokens, vec, img_len, attn_mask, rope)
        out = self.final_layer(tokens[:, :img_len], vec)
        return self._unpatchify(out, grid)

    @staticmethod
    def _drop_padding_of_one(
        txt: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A batch of one (the usual video batch) needs no attention mask: its padded text tokens are dropped
        instead, after the refiner (which reads the mask itself). The image tokens come out the same, the blocks
        skip the padding's work, and with no mask SDPA may use its flash kernel on a GPU (a mask rules it out)."""
        if text_mask is None or text_mask.shape[0] != 1:
            return txt, text_mask
        if text_mask.is_meta:  # counting FLOPs or shapes: no values to read, every token taken as valid
            return txt, None
        keep = text_mask[0].bool()
        return (txt if bool(keep.all()) else txt[:, keep.to(txt.device)]), None

    @staticmethod
    def _joint_mask(
        text_mask: torch.Tensor | None, img_len: int, device: torch.device
    ) -> torch.Tensor | None:
        """Key mask (B, 1, 1, img + txt): image tokens always attend; padded text tokens are never attended."""
        if text_mask is None:
            return None
        img_valid = torch.ones(text_mask.shape[0], img_len, dtype=torch.bool, device=device)
        return torch.cat([img_valid, text_mask.to(device=device, dtype=torch.bool)], dim=1)[:, None, None, :]

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        t, h, w = grid
        pt, ph, pw = self.config.patch_size
        x = x.reshape(x.shape[0], t, h, w, self.config.out_channels, pt, ph, pw)
        x = torch.einsum("nthwcopq->nctohpwq", x)
        return x.reshape(x.shape[0], self.config.out_channels, t * pt, h * ph, w * pw)


def build_dit(
    config: DiTConfig, device: torch.device | str = "meta", dtype: torch.dtype | None = None
) -> HYVideoDiffusionTransformer:
    """Build the DiT. On "meta" (the default) no memory is allocated: load weights with assign=True."""
    with torch.device(device):
        model = HYVideoDiffusionTransformer(config)
    if dtype is not None:
        model.to(dtype)
    return model
