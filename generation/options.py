"""The options of hv_generate_video.py, declared once, and what they must say together (checked as the typed
options are built, before any file is opened). Four `--help` sections: models, video, LoRA, output."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hunyuan_model.encoder_options import TextEncoderOptions
from hv_common import input_checks
from hv_common.cli import OneLineArgumentParser
from hv_common.errors import UserError
from hv_common.option_types import integer, non_negative_int, number
from hv_common.options import add_option_groups, config_from_values, option, shown_in

DESCRIPTION = """hv_generate_video.py: one video from a prompt, with the DiT as it is or with LoRAs (on the fly or
merged).

Order of work: every argument and file is checked first (LoRAs against the DiT's headers, in seconds), then
the prompt is encoded and the text encoders freed, then the DiT samples the latents (the trainer's
flow-matching Euler sampler), then the VAE decodes them. Nothing is written until the end.
"""

# --attn_mode value -> attention backend (hunyuan_model/attention.py); musubi-tuner's names and ours.
ATTN_MODES = {
    "sdpa": "sdpa",
    "torch": "sdpa",
    "flash": "flash_attn",
    "flash2": "flash_attn",
    "flash_attn": "flash_attn",
    "sageattn": "sage_attn",
    "sage_attn": "sage_attn",
    "xformers": "xformers",
}
STRENGTH_DEFAULT = 0.8  # musubi-tuner's --strength
OUTPUT_TYPES = ("video", "images", "latent", "both")  # musubi-tuner's choices


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class CompileSettings:
    """What torch.compile gets for each DiT block (generation/generate.py)."""

    backend: str
    mode: str
    dynamic: bool | None
    fullgraph: bool
    cache_size_limit: int | None


@dataclass(frozen=True, kw_only=True)
class ModelFiles:
    """models"""

    dit: str = option(help="DiT checkpoint: any layout (see docs/model.md)", required=True)
    vae: str | None = option(None, "VAE (needed for --output_type video or both)")


@dataclass(frozen=True, kw_only=True)
class ComputeOptions:
    """precision, attention, memory and device"""

    dit_dtype: str | None = option(None, "float32 | float16 | bfloat16 (default: bf16 on GPU)")
    vae_dtype: str | None = option(None, "float32 | float16 | bfloat16 (default: fp16 on GPU)")
    fp8: bool = option(
        False,
        "store the DiT blocks' Linear weights in float8_e4m3fn (about half the memory), compute in --dit_dtype; "
        "LoRAs are applied on the fly",
    )
    fp8_scaled: bool = option(False, "like --fp8 (implies it), with a per-row scale: more accurate")
    attn_mode: str = option(
        "sdpa",
        "attention kernel: sdpa (or torch; the default), flash (pip install flash-attn), sageattn (pip install "
        "sageattention), xformers (pip install xformers); all but sdpa need a CUDA GPU, flash and sageattn a "
        "fp16/bf16 DiT",
    )
    split_attn: bool = option(
        False,
        "attention one sample at a time: less peak memory with --guidance_scale (2 samples a step); with "
        "--attn_mode sdpa, SDPA on each sample's valid tokens; with another --attn_mode, that kernel once per "
        "sample",
    )
    blocks_to_swap: int = option(
        0,
        "keep the last N DiT blocks in CPU memory, copied to the GPU just before they run (0 to blocks - 2; a "
        "no-op on the CPU)",
        type=integer,
        metavar="N",
    )
    device: str | None = option(None, "cuda, cuda:1, cpu (default: cuda when available)")

    # --- compile, fp8 compute, offloading (musubi-tuner's setup_parser_compile, --fp8_fast, ...offloading) -----
    compile: bool = option(False, "torch.compile each DiT block (the first steps are slow: compiling)")
    compile_backend: str = option("inductor", "torch.compile backend (default inductor)")
    compile_mode: str = option("default", "torch.compile mode (default default)", choices=COMPILE_MODES)
    compile_dynamic: str | None = option(
        None, "torch.compile dynamic: true, false or auto (unset: auto)", choices=("true", "false", "auto")
    )
    compile_fullgraph: bool = option(False, "torch.compile fullgraph=True")
    compile_cache_size_limit: int | None = option(
        None, "torch._dynamo.config.cache_size_limit (unset: torch's default)", type=integer
    )
    compile_args: tuple[str, ...] | None = option(
        None,
        "[deprecated, as in musubi-tuner] with --compile: backend, mode, dynamic, fullgraph in one option; "
        "overrides the four options above and sets --compile_cache_size_limit 32",
        nargs=4,
        metavar=("BACKEND", "MODE", "DYNAMIC", "FULLGRAPH"),
    )
    img_in_txt_in_offloading: bool = option(
        False,
        "keep img_in and txt_in (the token refiner) in CPU memory, copied to the GPU just before they run each "
        "step",
    )
    use_pinned_memory_for_block_swap: bool = option(
        False,
        "with --blocks_to_swap: the swapped blocks in pinned CPU memory, so that their copies to the GPU run "
        "beside the compute (faster; more pinned memory, 'shared GPU memory' on Windows); default pageable",
    )
    fp8_fast: bool = option(
        False,
        "with --fp8: multiply the fp8 block Linears in fp8 (torch._scaled_mm), not upcast; needs a CUDA GPU "
        "with compute capability 8.9+ (RTX 40xx, L4, H100)",
    )

    def __post_init__(self) -> None:
        from hunyuan_model.attention import AttentionBackendError, check_attention_backend

        if self.fp8_fast and not self.fp8_weights:
            raise UserError("--fp8_fast requires --fp8")
        settings = self.compile_settings  # a bad --compile_args is one line now
        if self.compile and self.blocks_to_swap and settings.mode in ("reduce-overhead", "max-autotune"):
            raise UserError(
                f"--compile_mode {settings.mode} uses CUDA graphs, which block swap breaks: with --blocks_to_swap "
                "use --compile_mode default or max-autotune-no-cudagraphs"
            )

        if self.attn_mode not in ATTN_MODES:
            raise UserError(f"--attn_mode {self.attn_mode}: unknown; use one of {', '.join(ATTN_MODES)}")
        try:  # its package now; CUDA and the DiT's dtype once the device is known (generate.py)
            check_attention_backend(self.attention_backend, None, flag=f"--attn_mode {self.attn_mode}")
        except AttentionBackendError as e:
            raise UserError(str(e)) from None
        if self.blocks_to_swap < 0:
            raise UserError(f"--blocks_to_swap {self.blocks_to_swap}: expected 0 or more")

    @property
    def compile_settings(self) -> CompileSettings:
        """--compile_* as torch.compile takes them; --compile_args, when given, wins (musubi-tuner's rule)."""
        if self.compile_args is None:
            dynamic = {"true": True, "false": False}.get(self.compile_dynamic or "auto")
            return CompileSettings(
                self.compile_backend,
                self.compile_mode,
                dynamic,
                self.compile_fullgraph,
                self.compile_cache_size_limit,
            )
        backend, mode, dynamic_text, fullgraph_text = self.compile_args
        dynamic_text, fullgraph_text = dynamic_text.lower(), fullgraph_text.lower()
        if mode not in COMPILE_MODES or dynamic_text not in ("true", "false", "auto"):
            raise UserError(
                f"--compile_args {' '.join(self.compile_args)}: MODE is one of {', '.join(COMPILE_MODES)}, "
                "DYNAMIC one of true, false, auto"
            )
        dynamic = {"true": True, "false": False}.get(dynamic_text)
        return CompileSettings(backend, mode, dynamic, fullgraph_text == "true", 32)

    @property
    def fp8_weights(self) -> bool:
        """The DiT's Linear weights stored in float8 (--fp8 or --fp8_scaled)."""
        return self.fp8 or self.fp8_scaled

    @property
    def attention_backend(self) -> str:
        """--attn_mode / --split_attn as a backend name of hunyuan_model/attention.py ("xformers+split": the
        kernel once per sample)."""
        kernel = ATTN_MODES[self.attn_mode]
        if not self.split_attn:
            return kernel
        return "split_attn" if kernel == "sdpa" else f"{kernel}+split"


# --- musubi-tuner's text-encoder and VAE memory options (hunyuan_model/text_encoders.py, vae.py) -------------
@dataclass(frozen=True, kw_only=True)
class EncoderMemoryOptions:
    """text encoder and VAE memory"""

    fp8_llm: bool = option(
        False,
        "use fp8 for Text Encoder 1 (LLM): its Linear weights stored in float8_e4m3fn (about half the memory "
        "of float16), computed in float16 on a GPU",
    )
    vae_chunk_size: int | None = option(
        None,
        "chunk size for CausalConv3d in VAE: convs on inputs at least 1.5 chunks wide compute in width slices "
        "of N columns (same video, less memory; 0: off)",
        type=non_negative_int,
        metavar="N",
    )


# --- end of the text-encoder and VAE memory options ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SamplingOptions:
    """video"""

    prompt: str = option(required=True)
    negative_prompt: str | None = option(None, "for --guidance_scale (true CFG)")
    video_size: tuple[int, int] = option((256, 256), nargs=2, type=integer, metavar=("H", "W"))
    video_length: int = option(129, "frames: 4k + 1", type=integer)
    fps: int = option(24, type=integer)
    infer_steps: int = option(50, type=integer)
    embedded_cfg_scale: float = option(6.0, "the DiT's guidance input", type=number)
    guidance_scale: float = option(1.0, "true CFG (2 DiT passes a step); 1: off", type=number)
    flow_shift: float = option(7.0, type=number)
    seed: int | None = option(
        None, "default: a random seed (logged, in the file name)", type=input_checks.seed
    )
    vae_spatial_tile_sample_min_size: int = option(
        256, "VAE decoding in spatial tiles of this many pixels (larger frames only)", type=integer
    )

    def __post_init__(self) -> None:
        from hunyuan_model.sampler import validate_request

        height, width = self.video_size
        try:
            validate_request(height, width, self.video_length, self.infer_steps, self.flow_shift)
        except ValueError as e:
            raise UserError(f"--video_size / --video_length / --infer_steps / --flow_shift: {e}") from None

    @property
    def negative_text(self) -> str | None:
        """The prompt true CFG samples against (the empty prompt unless given); None without CFG."""
        if self.guidance_scale == 1.0:
            return None
        return self.negative_prompt if self.negative_prompt is not None else ""


@dataclass(frozen=True, kw_only=True)
class LoRAOptions:
    """LoRA"""

    lora_weight: tuple[str, ...] = option((), "LoRA files, any layout convert_lora.py reads", nargs="+")
    lora_multiplier: tuple[float, ...] | None = option(
        None, "one per file (default 1)", nargs="+", type=number
    )
    lora_merge: bool = option(False, "merge the LoRAs into the weights (else on the fly)")

    def __post_init__(self) -> None:
        if not self.lora_weight and self.lora_multiplier:
            raise UserError("--lora_multiplier without --lora_weight")
        if self.lora_weight:
            self.multipliers()  # one per file, or the error now

    def multipliers(self) -> list[float]:
        """One multiplier per LoRA file (1.0 each unless given)."""
        from lora_files.io import multipliers

        return multipliers(self.lora_weight, self.lora_multiplier)


@dataclass(frozen=True, kw_only=True)
class OutputOptions:
    """output"""

    output_type: str = option("video", choices=OUTPUT_TYPES)
    save_path: str = option(help="folder for the outputs", required=True)
    output_name: str | None = option(None, "file stem (default: <date-time>_<seed>)")

    @property
    def writes_latent(self) -> bool:
        return self.output_type in ("latent", "both")

    @property
    def writes_video(self) -> bool:
        return self.output_type in ("video", "both")

    @property
    def decodes(self) -> bool:
        """The VAE decodes the latents: a video or one PNG per frame."""
        return self.output_type != "latent"


# ---- musubi-tuner's remaining hv_generate_video.py options (helper "generation"): LoRA selection and LyCORIS,
# saving the merged DiT, CFG split, images/latents in and out, video-to-video and SkyReels I2V. Checked together
# in GenerateConfig.__post_init__ (_check_musubi_options).


@dataclass(frozen=True, kw_only=True)
class LoRASelectionOptions:
    """LoRA"""

    include_patterns: tuple[str, ...] = option(
        (),
        "one regex per --lora_weight file, in order: only that file's modules whose name (double_blocks.0."
        "img_attn_qkv) the regex matches WHOLE are applied (musubi-tuner searches the key: see docs)",
        nargs="*",
    )
    exclude_patterns: tuple[str, ...] = option(
        (),
        "one regex per --lora_weight file, in order: that file's modules whose name it matches whole are not "
        "applied (after --include_patterns)",
        nargs="*",
    )
    exclude_single_blocks: bool = option(False, "apply no LoRA module of the single_blocks")
    lycoris: bool = option(
        False,
        "merge the LoRA files with the LyCORIS library (pip install lycoris-lora): LoHa, LoKr and its other "
        "types, as musubi-tuner does",
    )
    save_merged_model: str | None = option(
        None,
        "merge the LoRAs into the DiT, save it to this safetensors file and exit: no video",
        metavar="FILE",
    )


@dataclass(frozen=True, kw_only=True)
class MusubiSamplingOptions:
    """video"""

    split_uncond: bool = option(
        False,
        "with --guidance_scale: the negative and the positive in two DiT passes a step instead of one batch "
        "of two (same video, less peak memory; --split_attn implies it, as in musubi-tuner)",
    )
    video_path: str | None = option(
        None,
        "video-to-video: a video (or folder of frames) to start from, resized and cropped to --video_size",
    )
    strength: float = option(
        STRENGTH_DEFAULT,
        "video-to-video: how much of the input is noised and denoised again (0: returned as it is, 1: all)",
        type=number,
    )
    image_path: str | None = option(
        None, "image-to-video with a SkyReels V1 I2V DiT (32 input channels): the first frame"
    )
    dit_in_channels: int | None = option(
        None,
        "the DiT's input channels, 16 (text-to-video) or 32 (SkyReels V1 I2V); default: read from --dit; a "
        "value the file disagrees with is an error",
        type=integer,
        section="models",
    )


@dataclass(frozen=True, kw_only=True)
class MusubiOutputOptions:
    """output"""

    no_metadata: bool = option(False, "no settings in the latent file's header")
    latent_path: tuple[str, ...] = option(
        (),
        "decode these latent files (written by --output_type latent or both): no sampling; with "
        "--output_type video or images",
        nargs="*",
    )


@dataclass(frozen=True, kw_only=True)
class GenerateConfig:
    """Everything hv_generate_video.py is told, checked together."""

    files: ModelFiles
    encoders: TextEncoderOptions = shown_in("models")
    compute: ComputeOptions = shown_in("models")
    encoder_memory: EncoderMemoryOptions = shown_in("models")
    sampling: SamplingOptions
    lora: LoRAOptions
    output: OutputOptions
    lora_selection: LoRASelectionOptions = shown_in("LoRA")  # helper "generation"
    musubi_sampling: MusubiSamplingOptions  # helper "generation"
    musubi_output: MusubiOutputOptions = shown_in("output")  # helper "generation"

    def __post_init__(self) -> None:
        if self.compute.fp8_weights and self.lora.lora_merge:
            raise UserError(
                "--lora_merge needs a DiT in --dit_dtype: with --fp8 the LoRAs are applied on the fly; "
                "drop --lora_merge"
            )
        if self.output.decodes and self.files.vae is None:
            raise UserError(f"--output_type {self.output.output_type} needs --vae")
        _check_musubi_options(self)  # helper "generation"


def _check_musubi_options(config: GenerateConfig) -> None:
    """What the options above must say together, and with the older groups (one line each)."""
    import re

    sel, sampling, out = config.lora_selection, config.musubi_sampling, config.musubi_output
    files = config.lora.lora_weight
    for flag, patterns in (
        ("--include_patterns", sel.include_patterns),
        ("--exclude_patterns", sel.exclude_patterns),
    ):
        if patterns and len(patterns) > len(files):
            raise UserError(
                f"{flag}: {len(patterns)} patterns for {len(files)} --lora_weight files; one per file, in order"
            )
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise UserError(f"{flag} {pattern!r}: not a regular expression: {e}") from None
    for flag, given in (
        ("--exclude_single_blocks", sel.exclude_single_blocks),
        ("--lycoris", sel.lycoris),
        ("--save_merged_model", sel.save_merged_model is not None),
    ):
        if given and not files:
            raise UserError(f"{flag} needs --lora_weight: it acts on the LoRA files")
    if config.compute.fp8_weights and (sel.lycoris or sel.save_merged_model):
        flag = "--lycoris" if sel.lycoris else "--save_merged_model"
        raise UserError(f"{flag} merges into a DiT in --dit_dtype: drop --fp8 / --fp8_scaled")
    if sel.lycoris:
        from importlib.util import find_spec

        if find_spec("lycoris") is None:
            raise UserError("--lycoris needs the LyCORIS library: pip install lycoris-lora")
    if sel.save_merged_model is not None:
        if out.latent_path:
            raise UserError("--save_merged_model and --latent_path exclude each other: the DiT is not loaded")
        if Path(sel.save_merged_model).resolve() == Path(config.files.dit).resolve():
            raise UserError(f"--save_merged_model {sel.save_merged_model}: that is --dit; write it elsewhere")
    for flag, media in (("--video_path", sampling.video_path), ("--image_path", sampling.image_path)):
        if media is not None and config.files.vae is None:
            raise UserError(f"{flag} needs --vae: the VAE encodes it")
    if not 0.0 <= sampling.strength <= 1.0:
        raise UserError(f"--strength {sampling.strength}: expected 0 to 1")
    if sampling.dit_in_channels is not None and sampling.dit_in_channels < 1:
        raise UserError(f"--dit_in_channels {sampling.dit_in_channels}: expected a positive number")
    if out.latent_path and config.output.output_type not in ("video", "images"):
        raise UserError(
            f"--latent_path decodes latents: use --output_type video or images, not {config.output.output_type}"
        )


SECTIONS = ("models", "video", "LoRA", "output")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="hv_generate_video.py", description=DESCRIPTION)
    add_option_groups(parser, GenerateConfig, SECTIONS)
    return parser


def parse_generate(argv: Sequence[str] | None = None) -> GenerateConfig:
    return config_from_values(GenerateConfig, vars(build_parser().parse_args(argv)))
