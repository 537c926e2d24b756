"""hv_generate_video.py: one video from a prompt, with the DiT as it is or with LoRAs (on the fly or merged).

Order of work: every argument and file is checked first (LoRAs against the DiT's headers, in seconds), then
the prompt is encoded and the text encoders freed, then the DiT samples the latents (the trainer's
flow-matching Euler sampler), then the VAE decodes them. Nothing is written until the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import secrets
import time
from pathlib import Path

import torch

from hunyuan_model.block_swap import apply_block_swap
from hunyuan_model.encoder_options import add_text_encoder_args
from hv_common import input_checks
from hv_common.cli import OneLineArgumentParser
from hv_common.devices import parse_dtype, pick_device
from hv_common.errors import UserError
from lora_files.io import LoadedLoRA, linear_shapes, load_checked, multipliers

logger = logging.getLogger(__name__)

# --attn_mode value -> attention backend (hunyuan_model/attention.py); musubi-tuner's names and ours.
ATTN_MODES = {
    "sdpa": "sdpa", "torch": "sdpa", "flash": "flash_attn", "flash2": "flash_attn", "flash_attn": "flash_attn",
    "sageattn": "sage_attn", "sage_attn": "sage_attn", "xformers": "xformers",
}  # fmt: skip
LATENT_KEY = "latent"  # musubi-tuner's key in latent files


def build_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(prog="hv_generate_video.py", description=__doc__)
    models = p.add_argument_group("models")
    models.add_argument("--dit", required=True, help="DiT checkpoint: any layout (see docs/model.md)")
    models.add_argument("--vae", default=None, help="VAE (needed for --output_type video or both)")
    add_text_encoder_args(models)
    models.add_argument(
        "--dit_dtype", default=None, help="float32 | float16 | bfloat16 (default: bf16 on GPU)"
    )
    models.add_argument(
        "--vae_dtype", default=None, help="float32 | float16 | bfloat16 (default: fp16 on GPU)"
    )
    models.add_argument("--fp8", action="store_true",
                        help="store the DiT blocks' Linear weights in float8_e4m3fn (about half the memory), "
                        "compute in --dit_dtype; LoRAs are applied on the fly")  # fmt: skip
    models.add_argument(
        "--fp8_scaled",
        action="store_true",
        help="like --fp8 (implies it), with a per-row scale: more accurate",
    )
    models.add_argument("--attn_mode", default="sdpa",
                        help="attention kernel: sdpa (or torch; the default), flash (pip install flash-attn), "
                        "sageattn (pip install sageattention), xformers (pip install xformers); all but sdpa "
                        "need a CUDA GPU, flash and sageattn a fp16/bf16 DiT")  # fmt: skip
    models.add_argument("--split_attn", action="store_true",
                        help="SDPA one sample at a time on its valid tokens (with --attn_mode sdpa only): "
                        "less peak memory with --guidance_scale (2 samples a step)")  # fmt: skip
    models.add_argument("--blocks_to_swap", type=int, default=0, metavar="N",
                        help="keep the last N DiT blocks in CPU memory, copied to the GPU just before they run "
                        "(0 to blocks - 2; a no-op on the CPU)")  # fmt: skip
    models.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")

    video = p.add_argument_group("video")
    video.add_argument("--prompt", required=True)
    video.add_argument("--negative_prompt", default=None, help="for --guidance_scale (true CFG)")
    video.add_argument("--video_size", nargs=2, type=int, default=[256, 256], metavar=("H", "W"))
    video.add_argument("--video_length", type=int, default=129, help="frames: 4k + 1")
    video.add_argument("--fps", type=int, default=24)
    video.add_argument("--infer_steps", type=int, default=50)
    video.add_argument("--embedded_cfg_scale", type=float, default=6.0, help="the DiT's guidance input")
    video.add_argument(
        "--guidance_scale", type=float, default=1.0, help="true CFG (2 DiT passes a step); 1: off"
    )
    video.add_argument("--flow_shift", type=float, default=7.0)
    video.add_argument(
        "--seed", type=input_checks.seed, default=None, help="default: a random seed (logged, in the file name)"
    )
    video.add_argument("--vae_spatial_tile_sample_min_size", type=int, default=256,
                       help="VAE decoding in spatial tiles of this many pixels (larger frames only)")  # fmt: skip

    lora = p.add_argument_group("LoRA")
    lora.add_argument(
        "--lora_weight", nargs="+", default=[], help="LoRA files, any layout convert_lora.py reads"
    )
    lora.add_argument(
        "--lora_multiplier", nargs="+", type=float, default=None, help="one per file (default 1)"
    )
    lora.add_argument(
        "--lora_merge", action="store_true", help="merge the LoRAs into the weights (else on the fly)"
    )

    out = p.add_argument_group("output")
    out.add_argument("--output_type", choices=("video", "latent", "both"), default="video")
    out.add_argument("--save_path", required=True, help="folder for the outputs")
    out.add_argument("--output_name", default=None, help="file stem (default: <date-time>_<seed>)")
    return p


def _check(args: argparse.Namespace) -> None:
    """Every cheap check, before any model is loaded."""
    from hunyuan_model.sampler import validate_request

    if (args.fp8 or args.fp8_scaled) and args.lora_merge:
        raise UserError("--lora_merge needs a DiT in --dit_dtype: with --fp8 the LoRAs are applied on the "
                        "fly; drop --lora_merge")  # fmt: skip
    _attention_backend(args)
    if args.blocks_to_swap < 0:
        raise UserError(f"--blocks_to_swap {args.blocks_to_swap}: expected 0 or more")
    height, width = args.video_size
    try:
        validate_request(height, width, args.video_length, args.infer_steps, args.flow_shift)
    except ValueError as e:
        raise UserError(f"--video_size / --video_length / --infer_steps / --flow_shift: {e}") from None
    if args.output_type != "latent" and args.vae is None:
        raise UserError(f"--output_type {args.output_type} needs --vae")
    for flag in ("dit", "vae", "text_encoder1", "text_encoder2"):
        value = getattr(args, flag)
        if value is not None and not Path(value).exists():
            raise UserError(f"--{flag} {value}: no such file or folder")
    if args.guidance_scale != 1.0 and args.negative_prompt is None:
        args.negative_prompt = ""  # plain CFG: against the empty prompt
    if Path(args.save_path).is_file():
        raise UserError(f"--save_path {args.save_path}: is a file, not a folder")


def _load_loras(args: argparse.Namespace) -> list[tuple[LoadedLoRA, float]]:
    """The LoRA files, checked against the DiT's headers (no weights read)."""
    from hunyuan_model.checkpoint import read_state_dict, to_original_layout

    if not args.lora_weight:
        if args.lora_multiplier:
            raise UserError("--lora_multiplier without --lora_weight")
        return []
    mults = multipliers(args.lora_weight, args.lora_multiplier)
    shapes = linear_shapes(to_original_layout(read_state_dict(args.dit, meta=True), args.dit))
    return load_checked(args.lora_weight, mults, shapes, args.dit)


def _without_padding(emb):
    """Drop the padding after the last real token. The DiT masks it out, so the video is the same (see
    test_padding_changes_nothing_but_what_it_should), and a short prompt no longer costs 256 tokens a step."""
    from hunyuan_model.text_encoders import TextEmbeddings

    real = emb.llm_mask.any(dim=0).nonzero()
    keep = int(real.max()) + 1 if len(real) else 1
    return TextEmbeddings(llm=emb.llm[:, :keep], llm_mask=emb.llm_mask[:, :keep], clip_pooled=emb.clip_pooled)


def _encode(args: argparse.Namespace, device: torch.device):
    from hunyuan_model.text_encoders import HunyuanTextEncoders

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    encoders = HunyuanTextEncoders(args.text_encoder1, args.text_encoder2, dtype=dtype, device=device,
                                   llm_tokenizer=args.tokenizer1, clip_tokenizer=args.tokenizer2)  # fmt: skip
    try:
        positive = _without_padding(encoders.encode([args.prompt]))
        negative = (
            _without_padding(encoders.encode([args.negative_prompt])) if args.guidance_scale != 1.0 else None
        )
    finally:
        del encoders  # the LLM alone is 8 B parameters: gone before the DiT loads
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return positive, negative


def _attention_backend(args: argparse.Namespace, device: torch.device | None = None) -> str:
    """--attn_mode / --split_attn as a backend name, checked (package now; CUDA and dtype once the device is
    known). A kernel that cannot run is an error, never a silent fall-back to SDPA."""
    from hunyuan_model.attention import AttentionBackendError, check_attention_backend

    backend = ATTN_MODES.get(args.attn_mode)
    if backend is None:
        raise UserError(f"--attn_mode {args.attn_mode}: unknown; use one of {', '.join(ATTN_MODES)}")
    if args.split_attn:
        if backend != "sdpa":
            raise UserError(f"--split_attn and --attn_mode {args.attn_mode} exclude each other: "
                            "choose one attention backend")  # fmt: skip
        backend = "split_attn"
    dtype = None if device is None else _dtypes(args, device)[0]
    try:
        check_attention_backend(backend, device, dtype=dtype, flag=f"--attn_mode {args.attn_mode}")
    except AttentionBackendError as e:
        raise UserError(str(e)) from None
    return backend


def _dtypes(args: argparse.Namespace, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(DiT, VAE) dtypes: bf16 / fp16 on a GPU, fp32 on a CPU, unless given."""
    gpu = device.type == "cuda"
    return (parse_dtype(args.dit_dtype, torch.bfloat16 if gpu else torch.float32),
            parse_dtype(args.vae_dtype, torch.float16 if gpu else torch.float32))  # fmt: skip


def _sample(args, loras, positive, negative, seed: int, device: torch.device) -> torch.Tensor:
    from hunyuan_model.attention import set_attention_backend
    from hunyuan_model.checkpoint import load_dit
    from hunyuan_model.sampler import sample_latents
    from lora_files.apply import apply_on_the_fly, merge_into

    dtype = _dtypes(args, device)[0]
    fp8 = args.fp8 or args.fp8_scaled
    swap = args.blocks_to_swap and device.type != "cpu"
    # with swap the DiT loads into CPU memory: the swapped blocks stay there, the rest moves to the device
    model = load_dit(args.dit, dtype=dtype, device="cpu" if swap else device, fp8_base=fp8,
                     fp8_scaled=args.fp8_scaled, work_device=device)  # fmt: skip
    model.eval().requires_grad_(False)
    set_attention_backend(model, _attention_backend(args, device))
    if loras and args.lora_merge:
        merge_into(model, loras)
    elif loras:
        applied = apply_on_the_fly(model, loras, dtype=dtype if fp8 else None)  # LoRA weights never in fp8
        for module in applied:  # small: always on the device, also those of swapped blocks
            module.to(device)
    apply_block_swap(model, args.blocks_to_swap, device)
    height, width = args.video_size
    latents = sample_latents(
        model, positive, height=height, width=width, frames=args.video_length, steps=args.infer_steps,
        embedded_guidance_scale=args.embedded_cfg_scale, flow_shift=args.flow_shift, seed=seed, device=device,
        dtype=dtype, cfg_scale=args.guidance_scale if negative is not None else None, negative=negative,
    )  # fmt: skip
    del model
    gc.collect()
    return latents.cpu()


def _settings(args: argparse.Namespace, seed: int) -> dict[str, str]:
    """What made the video, in the latent file's header."""
    mults = multipliers(args.lora_weight, args.lora_multiplier) if args.lora_weight else []
    loras = [{"file": Path(f).name, "multiplier": m} for f, m in zip(args.lora_weight, mults, strict=True)]
    return {"prompt": args.prompt, "seed": str(seed), "video_size": json.dumps(args.video_size),
            "video_length": str(args.video_length), "infer_steps": str(args.infer_steps),
            "embedded_cfg_scale": str(args.embedded_cfg_scale), "flow_shift": str(args.flow_shift),
            "guidance_scale": str(args.guidance_scale), "loras": json.dumps(loras)}  # fmt: skip


def _write_latents(latents: torch.Tensor, path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    from hv_common.atomic import atomic_write

    atomic_write(path, lambda tmp: save_file({LATENT_KEY: latents.contiguous()}, str(tmp), metadata=metadata))
    return path


def _decode(args: argparse.Namespace, latents: torch.Tensor, device: torch.device):
    from hunyuan_model.vae import decode_latents, load_vae

    dtype = _dtypes(args, device)[1]
    vae = load_vae(args.vae, dtype=dtype, device=device)
    size = args.vae_spatial_tile_sample_min_size  # diffusers tiles only frames larger than a tile
    vae.enable_tiling(tile_sample_min_height=size, tile_sample_min_width=size,
                      tile_sample_stride_height=size * 3 // 4, tile_sample_stride_width=size * 3 // 4)  # fmt: skip
    return decode_latents(vae, latents)[0]


def run(args: argparse.Namespace) -> int:
    from hv_common.video_io import write_media

    _check(args)
    device = pick_device(args.device)
    _dtypes(args, device)  # a bad dtype name fails now, not after minutes of work
    _attention_backend(args, device)  # and a kernel that needs CUDA or fp16/bf16
    loras = _load_loras(args)
    seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    logger.info("seed %d", seed)
    positive, negative = _encode(args, device)
    latents = _sample(args, loras, positive, negative, seed, device)
    stem = Path(args.save_path) / (args.output_name or f"{time.strftime('%Y%m%d-%H%M%S')}_{seed}")
    written = []
    if args.output_type in ("latent", "both"):
        written.append(
            _write_latents(latents, stem.with_name(stem.name + "_latent.safetensors"), _settings(args, seed))
        )
    if args.output_type in ("video", "both"):
        written.append(write_media(_decode(args, latents, device), stem, fps=args.fps))
    for path in written:
        logger.info("wrote %s", path)
        print(path)
    return 0
