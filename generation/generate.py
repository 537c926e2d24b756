"""hv_generate_video.py's work (its options: generation/options.py): every argument and file checked first,
then the prompt encoded and the text encoders freed, then the DiT samples the latents, then the VAE decodes
them. Nothing is written until the end.
"""

from __future__ import annotations

import gc
import json
import logging
import secrets
import time
from pathlib import Path

import torch

from generation.options import ComputeOptions, GenerateConfig, OutputOptions, SamplingOptions
from hunyuan_model.block_swap import apply_block_swap
from hunyuan_model.encoder_options import TextEncoderOptions
from hv_common.devices import parse_dtype, pick_device
from hv_common.errors import UserError
from lora_files.io import LoadedLoRA, linear_shapes, load_checked

logger = logging.getLogger(__name__)

LATENT_KEY = "latent"  # musubi-tuner's key in latent files


def _check_before_loading(config: GenerateConfig) -> None:
    """What the options cannot check alone: the files they name, the output folder. Before any model loads."""
    named = {
        "dit": config.files.dit,
        "vae": config.files.vae,
        "text_encoder1": config.encoders.text_encoder1,
        "text_encoder2": config.encoders.text_encoder2,
    }
    for flag, value in named.items():
        if value is not None and not Path(value).exists():
            raise UserError(f"--{flag} {value}: no such file or folder")
    if Path(config.output.save_path).is_file():
        raise UserError(f"--save_path {config.output.save_path}: is a file, not a folder")


def _load_loras(config: GenerateConfig) -> list[tuple[LoadedLoRA, float]]:
    """The LoRA files, checked against the DiT's headers (no weights read)."""
    from hunyuan_model.checkpoint import read_state_dict, to_original_layout

    if not config.lora.lora_weight:
        return []
    dit = config.files.dit
    shapes = linear_shapes(to_original_layout(read_state_dict(dit, meta=True), dit))
    return load_checked(config.lora.lora_weight, config.lora.multipliers(), shapes, dit)


def _without_padding(emb):
    """Drop the padding after the last real token. The DiT masks it out, so the video is the same (see
    test_padding_changes_nothing_but_what_it_should), and a short prompt no longer costs 256 tokens a step."""
    from hunyuan_model.text_encoders import TextEmbeddings

    real = emb.llm_mask.any(dim=0).nonzero()
    keep = int(real.max()) + 1 if len(real) else 1
    return TextEmbeddings(llm=emb.llm[:, :keep], llm_mask=emb.llm_mask[:, :keep], clip_pooled=emb.clip_pooled)


def _encode(encoders: TextEncoderOptions, sampling: SamplingOptions, device: torch.device):
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    models = encoders.load(dtype, device)
    try:
        positive = _without_padding(models.encode([sampling.prompt]))
        negative_text = sampling.negative_text
        negative = _without_padding(models.encode([negative_text])) if negative_text is not None else None
    finally:
        del models  # the LLM alone is 8 B parameters: gone before the DiT loads
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return positive, negative


def _attention_backend(compute: ComputeOptions, device: torch.device | None = None) -> str:
    """The attention backend, checked: its package (as the options were), and once the device is known, CUDA
    and the DiT's dtype. A kernel that cannot run is an error, never a silent fall-back to SDPA."""
    from hunyuan_model.attention import AttentionBackendError, check_attention_backend

    backend = compute.attention_backend
    dtype = None if device is None else _dtypes(compute, device)[0]
    try:
        check_attention_backend(backend, device, dtype=dtype, flag=f"--attn_mode {compute.attn_mode}")
    except AttentionBackendError as e:
        raise UserError(str(e)) from None
    return backend


def _dtypes(compute: ComputeOptions, device: torch.device) -> tuple[torch.dtype, torch.dtype]:
    """(DiT, VAE) dtypes: bf16 / fp16 on a GPU, fp32 on a CPU, unless given."""
    gpu = device.type == "cuda"
    return (
        parse_dtype(compute.dit_dtype, torch.bfloat16 if gpu else torch.float32),
        parse_dtype(compute.vae_dtype, torch.float16 if gpu else torch.float32),
    )


def _sample(
    config: GenerateConfig, loras, positive, negative, seed: int, device: torch.device
) -> torch.Tensor:
    from hunyuan_model.attention import set_attention_backend
    from hunyuan_model.checkpoint import load_dit
    from hunyuan_model.sampler import sample_latents
    from lora_files.apply import apply_on_the_fly, merge_into

    compute, sampling = config.compute, config.sampling
    dtype = _dtypes(compute, device)[0]
    swap = compute.blocks_to_swap and device.type != "cpu"
    # with swap the DiT loads into CPU memory: the swapped blocks stay there, the rest moves to the device
    model = load_dit(
        config.files.dit,
        dtype=dtype,
        device="cpu" if swap else device,
        fp8_base=compute.fp8_weights,
        fp8_scaled=compute.fp8_scaled,
        work_device=device,
    )
    model.eval().requires_grad_(False)
    set_attention_backend(model, _attention_backend(compute, device))
    if compute.fp8_fast:  # before the LoRAs: a LoRA module calls the forward its Linear had when applied
        from hunyuan_model.fp8_fast import enable_fp8_fast

        logger.info("--fp8_fast: %d block Linears multiply in fp8", enable_fp8_fast(model))
    if loras and config.lora.lora_merge:
        merge_into(model, loras)
    elif loras:  # LoRA weights never in fp8
        applied = apply_on_the_fly(model, loras, dtype=dtype if compute.fp8_weights else None)
        for module in applied:  # small: always on the device, also those of swapped blocks
            module.to(device)
    _swap_offload_compile(compute, model, device)
    height, width = sampling.video_size
    latents = sample_latents(
        model,
        positive,
        height=height,
        width=width,
        frames=sampling.video_length,
        steps=sampling.infer_steps,
        embedded_guidance_scale=sampling.embedded_cfg_scale,
        flow_shift=sampling.flow_shift,
        seed=seed,
        device=device,
        dtype=dtype,
        cfg_scale=sampling.guidance_scale if negative is not None else None,
        negative=negative,
    )
    del model
    gc.collect()
    return latents.cpu()


def _swap_offload_compile(compute: ComputeOptions, model, device: torch.device) -> None:
    """With the LoRAs in place: --blocks_to_swap (--use_pinned_memory_for_block_swap), then
    --img_in_txt_in_offloading, --compile (each block, as musubi-tuner's compile_transformer)."""
    apply_block_swap(model, compute.blocks_to_swap, device, compute.use_pinned_memory_for_block_swap)
    if compute.img_in_txt_in_offloading:
        model.enable_img_in_txt_in_offloading()
    if not compute.compile:
        return
    settings = compute.compile_settings
    if settings.cache_size_limit is not None:
        torch._dynamo.config.cache_size_limit = settings.cache_size_limit
    try:
        model.compile_blocks(settings.backend, settings.mode, settings.dynamic, settings.fullgraph)
    except torch._dynamo.exc.InvalidBackend:
        known = ", ".join(torch._dynamo.list_backends())
        raise UserError(f"--compile_backend {settings.backend}: unknown; known: {known}") from None
    logger.info("compiling each DiT block (backend %s, mode %s)", settings.backend, settings.mode)


def _settings(config: GenerateConfig, seed: int) -> dict[str, str]:
    """What made the video, in the latent file's header."""
    files, mults = config.lora.lora_weight, config.lora.multipliers() if config.lora.lora_weight else []
    loras = [{"file": Path(f).name, "multiplier": m} for f, m in zip(files, mults, strict=True)]
    sampling = config.sampling
    return {
        "prompt": sampling.prompt,
        "seed": str(seed),
        "video_size": json.dumps(list(sampling.video_size)),
        "video_length": str(sampling.video_length),
        "infer_steps": str(sampling.infer_steps),
        "embedded_cfg_scale": str(sampling.embedded_cfg_scale),
        "flow_shift": str(sampling.flow_shift),
        "guidance_scale": str(sampling.guidance_scale),
        "loras": json.dumps(loras),
    }


def _write_latents(latents: torch.Tensor, path: Path, metadata: dict[str, str]) -> Path:
    from safetensors.torch import save_file

    from hv_common.atomic import atomic_write

    atomic_write(path, lambda tmp: save_file({LATENT_KEY: latents.contiguous()}, str(tmp), metadata=metadata))
    return path


def _decode(config: GenerateConfig, vae_path: str, latents: torch.Tensor, device: torch.device):
    from hunyuan_model.vae import decode_latents, load_vae

    dtype = _dtypes(config.compute, device)[1]
    vae = load_vae(vae_path, dtype=dtype, device=device)
    size = config.sampling.vae_spatial_tile_sample_min_size  # diffusers tiles only frames larger than a tile
    vae.enable_tiling(  # type: ignore[attr-defined]  # diffusers resolves its classes lazily: untyped here
        tile_sample_min_height=size,
        tile_sample_min_width=size,
        tile_sample_stride_height=size * 3 // 4,
        tile_sample_stride_width=size * 3 // 4,
    )
    return decode_latents(vae, latents)[0]


def _output_stem(output: OutputOptions, seed: int) -> Path:
    """<save_path>/<output_name>, or a name made of the time and the seed."""
    return Path(output.save_path) / (output.output_name or f"{time.strftime('%Y%m%d-%H%M%S')}_{seed}")


def run(config: GenerateConfig) -> int:
    from hv_common.video_io import write_media

    _check_before_loading(config)
    device = pick_device(config.compute.device)
    _dtypes(config.compute, device)  # a bad dtype name fails now, not after minutes of work
    _attention_backend(config.compute, device)  # and a kernel that needs CUDA or fp16/bf16
    if config.compute.fp8_fast:
        from hunyuan_model.fp8_fast import check_fp8_fast

        check_fp8_fast(device)  # fp8 matmuls need an fp8-capable GPU: one line, before anything loads
    loras = _load_loras(config)
    seed = config.sampling.seed if config.sampling.seed is not None else secrets.randbelow(2**32)
    logger.info("seed %d", seed)
    positive, negative = _encode(config.encoders, config.sampling, device)
    latents = _sample(config, loras, positive, negative, seed, device)
    stem = _output_stem(config.output, seed)
    written = []
    if config.output.writes_latent:
        latent_path = stem.with_name(stem.name + "_latent.safetensors")
        written.append(_write_latents(latents, latent_path, _settings(config, seed)))
    if config.output.writes_video and config.files.vae is not None:  # checked: video needs --vae
        written.append(
            write_media(_decode(config, config.files.vae, latents, device), stem, fps=config.sampling.fps)
        )
    for path in written:
        logger.info("wrote %s", path)
        print(path)
    return 0
