"""The model the LoRA trains on, and how it is made to fit in memory (fp8, block swap, checkpointing, compile,
attention kernels): what is read, and what it costs on the GPU."""

from __future__ import annotations

from dataclasses import dataclass

from hv_common.errors import UserError
from hv_common.option_types import dtype_name, non_negative_int, positive_int
from hv_common.options import option

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# accelerate's DynamoBackend values, as musubi-tuner offers them (not imported: the parser answers before torch)
DYNAMO_BACKENDS = (
    "NO",
    "EAGER",
    "AOT_EAGER",
    "INDUCTOR",
    "AOT_TS_NVFUSER",
    "NVPRIMS_NVFUSER",
    "CUDAGRAPHS",
    "OFI",
    "FX2TRT",
    "ONNXRT",
    "TENSORRT",
    "AOT_TORCHXLA_TRACE_ONCE",
    "TORCHXLA_TRACE_ONCE",
    "TVM",
    "HPU_BACKEND",
    "NEURON",
)
DYNAMO_MODES = ("default", "reduce-overhead", "max-autotune")
ATTENTION_BACKENDS = ("flash_attn", "flash3", "sage_attn", "xformers")  # kernel flags; none set: "sdpa"


@dataclass(frozen=True)
class ModelOptions:
    """model"""

    dit: str | None = option(None, "DiT checkpoint (.safetensors, .pt, or a diffusers folder)")
    dit_dtype: str | None = option(None, "DiT weight dtype (unset: bfloat16 on a GPU)", type=dtype_name)
    vae: str | None = option(None, "VAE checkpoint, for sample previews")
    vae_dtype: str | None = option(None, "VAE dtype (unset: float16 on a GPU)", type=dtype_name)
    text_encoder1: str | None = option(None, "LLM text encoder (llava-llama-3), for sample prompts")
    text_encoder2: str | None = option(None, "CLIP-L text encoder, for sample prompts")
    # The encoders and VAE of the sample previews (training/run.py build_sampler), as in musubi-tuner.
    text_encoder_dtype: str | None = option(
        None,
        "text encoders' dtype, for sample prompts (unset: float16 on a GPU, float32 on a CPU)",
        type=dtype_name,
    )
    fp8_llm: bool = option(
        False,
        "use fp8 for LLM: its Linear weights stored in float8_e4m3fn (about half the memory of float16), "
        "computed in --text_encoder_dtype, for sample prompts",
    )
    vae_chunk_size: int | None = option(
        None,
        "chunk size for CausalConv3d in VAE: convs on inputs at least 1.5 chunks wide compute in width slices "
        "of N columns (same previews, less memory; 0: off)",
        type=non_negative_int,
        metavar="N",
    )
    vae_tiling: bool = option(
        False,
        "enable spatial tiling for VAE (256-pixel tiles), for previews; automatically enabled when "
        "--vae_spatial_tile_sample_min_size is given",
    )
    vae_spatial_tile_sample_min_size: int | None = option(
        None,
        "spatial tile sample min size for VAE, default 256 (giving it enables tiling)",
        type=positive_int,
    )

    @property
    def vae_tile_size(self) -> int | None:
        """The previews' VAE tile in pixels, None for no tiling (musubi-tuner's rule)."""
        from hunyuan_model.encoder_options import vae_tile_size

        return vae_tile_size(self.vae_tiling, self.vae_spatial_tile_sample_min_size)

    dit_in_channels: int = option(
        16,
        "the DiT's input channels (checked against --dit): 16; 32 trains a SkyReels V1 I2V DiT, the video's "
        "first latent frame given as 16 more channels (musubi-tuner's I2V training)",
        type=positive_int,
    )


@dataclass(frozen=True)
class MemoryOptions:
    """memory"""

    fp8_base: bool = option(
        False,
        "store the DiT blocks' Linear weights in float8_e4m3fn (about half the memory of bf16), compute in "
        "--dit_dtype; modulation, norms, biases, embeddings and the final layer stay in --dit_dtype",
        section="model",
    )
    fp8_scaled: bool = option(
        False,
        "like --fp8_base (implies it), with a float32 scale per output row: closer to the bf16 model",
        section="model",
    )
    blocks_to_swap: int | None = option(
        None,
        "keep the last N of the DiT's blocks (double then single, 60 on the 720p model) in CPU memory and "
        "copy each to the GPU just before it runs: less GPU memory, more PCIe traffic; at most blocks - 2",
        type=non_negative_int,
        section="model",
    )
    use_pinned_memory_for_block_swap: bool = option(
        False,
        "with --blocks_to_swap: the swapped blocks in pinned CPU memory, so that their copies to the GPU run "
        "beside the compute (faster; more pinned memory, 'shared GPU memory' on Windows); default pageable",
        section="model",
    )
    block_swap_h2d_only: bool = option(
        False,
        "H2D-only block swap (a CPU master copy, only host->device copies, never back): how this block swap "
        "always works, so the flag only says so in the log",
        section="model",
    )
    block_swap_ring_size: int = option(
        2,
        refused="this block swap always keeps two swapped blocks on the GPU (the running one and the prefetched "
        "one): musubi-tuner's default ring of 2; other sizes are not built",
        type=positive_int,
        section="model",
    )
    img_in_txt_in_offloading: bool = option(
        False,
        "keep img_in and txt_in (the token refiner) in CPU memory and copy them to the GPU just before they run "
        "each step (nothing is copied back: they are frozen)",
        section="model",
    )
    # At most one attention backend. The kernels are checked at start-up: a missing package, a CPU device or a
    # float32 DiT for flash/sage is an error, never a silent fall-back to SDPA.
    sdpa: bool = option(
        False, "PyTorch scaled_dot_product_attention (the default; any device)", section="attention"
    )
    flash_attn: bool = option(
        False,
        "FlashAttention 2 on the valid tokens only (pip install flash-attn; CUDA, fp16/bf16)",
        section="attention",
    )
    sage_attn: bool = option(
        False,
        "SageAttention (pip install sageattention; CUDA): inference only, it has no backward pass, so the "
        "trainer refuses it; use it in hv_generate_video.py (--attn_mode sageattn)",
        section="attention",
    )
    xformers: bool = option(
        False,
        "xformers memory_efficient_attention per sample on the valid tokens (pip install xformers; CUDA)",
        section="attention",
    )
    flash3: bool = option(
        False,
        "FlashAttention 3 (the flash_attn_interface module, built from flash-attention's hopper/ folder; "
        "Hopper GPUs, fp16/bf16) on the valid tokens only",
        section="attention",
    )
    split_attn: bool = option(
        False,
        "attention one sample at a time (batch 1 per call): alone (or with --sdpa), SDPA on each sample's "
        "valid tokens with no mask tensor, so that PyTorch can use its flash kernel on CUDA; with --xformers, "
        "--flash_attn, --flash3 or --sage_attn, that kernel once per sample",
        section="attention",
    )
    gradient_checkpointing: bool = option(False, "recompute activations: less memory", section="training")
    gradient_checkpointing_cpu_offload: bool = option(
        False,
        "with --gradient_checkpointing: keep the saved block inputs in CPU memory (less GPU memory, slower)",
        section="training",
    )
    compile: bool = option(
        False, "torch.compile each DiT block (first steps are slow: compiling)", section="training"
    )
    compile_backend: str = option("inductor", "torch.compile backend (default inductor)", section="training")
    compile_mode: str = option(
        "default", "torch.compile mode (default default)", choices=COMPILE_MODES, section="training"
    )
    compile_dynamic: str | None = option(
        None,
        "dynamic shapes: true, false, or auto (unset: auto, torch decides)",
        choices=("true", "false", "auto"),
        type=str.lower,
        section="training",
    )
    compile_fullgraph: bool = option(False, "torch.compile fullgraph=True", section="training")
    compile_cache_size_limit: int | None = option(
        None,
        "torch._dynamo recompile limit per block kind (unset: torch's default, 8)",
        type=positive_int,
        section="training",
    )
    # --- musubi-tuner's dynamo options: accelerate's TorchDynamoPlugin compiles the whole DiT (its forward) ---
    dynamo_backend: str = option(
        "NO",
        "torch.compile the whole DiT with this backend, as accelerate's TorchDynamoPlugin does (NO: off); "
        "--compile compiles each block instead",
        choices=DYNAMO_BACKENDS,
        section="training",
    )
    dynamo_mode: str | None = option(
        None,
        "torch.compile mode for --dynamo_backend (unset: default)",
        choices=DYNAMO_MODES,
        section="training",
    )
    dynamo_fullgraph: bool = option(False, "--dynamo_backend with fullgraph=True", section="training")
    dynamo_dynamic: bool = option(
        False,
        "--dynamo_backend with dynamic=True (unset: dynamic=False, static shapes, as accelerate passes it)",
        section="training",
    )

    def __post_init__(self) -> None:
        if self.gradient_checkpointing_cpu_offload and not self.gradient_checkpointing:
            raise UserError("--gradient_checkpointing_cpu_offload needs --gradient_checkpointing")
        if self.compile and self.blocks_to_swap and self.compile_mode in ("reduce-overhead", "max-autotune"):
            # CUDA graphs bake in the weights' addresses; block swap gives them new ones every step
            raise UserError(
                f"--compile_mode {self.compile_mode} uses CUDA graphs, which block swap breaks: with "
                "--blocks_to_swap use --compile_mode default or max-autotune-no-cudagraphs"
            )
        cuda_graphs = (
            self.dynamo_mode in ("reduce-overhead", "max-autotune") or self.dynamo_backend == "CUDAGRAPHS"
        )
        if self.dynamo_backend != "NO" and self.blocks_to_swap and cuda_graphs:
            raise UserError(
                f"--dynamo_backend {self.dynamo_backend} --dynamo_mode {self.dynamo_mode} uses CUDA graphs, "
                "which block swap breaks (weight addresses): with --blocks_to_swap use --dynamo_mode default"
            )
        if self.compile and self.blocks_to_swap and self.compile_backend == "cudagraphs":
            raise UserError(
                "--compile_backend cudagraphs and --blocks_to_swap exclude each other (weight addresses)"
            )
        _ = self.attention_backend  # two attention backends -> UserError

    @property
    def attention_backend(self) -> str:
        """The backend the flags choose (hunyuan_model/attention.py's names): "sdpa" unless a kernel flag of
        ATTENTION_BACKENDS is set; `--split_attn` makes it "split_attn" alone (or with `--sdpa`: it is SDPA one
        sample at a time; musubi users write both) and "<kernel>+split" with a kernel, as in musubi-tuner.
        Two kernel flags (or --sdpa and a kernel) are a UserError."""
        flags = dict(
            flash_attn=self.flash_attn,
            flash3=self.flash3,
            sage_attn=self.sage_attn,
            xformers=self.xformers,
        )
        chosen = [name for name in ATTENTION_BACKENDS if flags[name]]
        if self.sdpa and chosen:
            chosen.insert(0, "sdpa")
        if len(chosen) > 1:
            names = " and ".join(f"--{name}" for name in chosen)
            raise UserError(f"{names} exclude each other: choose one attention backend")
        if not chosen or chosen == ["sdpa"]:
            return "split_attn" if self.split_attn else "sdpa"
        return chosen[0] + ("+split" if self.split_attn else "")

    @property
    def dynamo_compile_kwargs(self) -> dict[str, object] | None:
        """torch.compile's arguments for the whole DiT, as accelerate's TorchDynamoPlugin.to_kwargs() gives them
        from musubi-tuner's --dynamo_* (backend in lower case, dynamic always a bool); None when off."""
        if self.dynamo_backend == "NO":
            return None
        mode = None if self.dynamo_mode in (None, "default") else self.dynamo_mode
        return {
            "backend": self.dynamo_backend.lower(),
            "mode": mode,
            "fullgraph": self.dynamo_fullgraph,
            "dynamic": self.dynamo_dynamic,
        }

    @property
    def compile_dynamic_shapes(self) -> bool | None:
        """torch.compile's `dynamic`: None lets torch decide (unset or "auto")."""
        return {"true": True, "false": False}.get(self.compile_dynamic or "auto")
