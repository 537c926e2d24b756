"""hv_generate_video.py's work (its options: generation/options.py): every argument and file checked first,
then the prompt encoded and the text encoders freed, then the DiT samples the latents, then the VAE decodes
them. Nothing is written until the end.
"""

from __future__ import annotations

import gc
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

import torch

from generation.lora_selection import filters_for, select
from generation.lycoris_merge import LycorisFile, load_lycoris_files, merge_lycoris
from generation.options import STRENGTH_DEFAULT, ComputeOptions, GenerateConfig, SamplingOptions
from hunyuan_model.block_swap import apply_block_swap
from hunyuan_model.config import DiTConfig
from hunyuan_model.encoder_options import TextEncoderOptions
from hunyuan_model.sampler import I2V_IN_CHANNELS
from hv_common.devices import parse_dtype, pick_device
from hv_common.errors import UserError
from lora_files.io import LoadedLoRA, linear_shapes, load_checked

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoRAs:
    """The LoRA files, read and checked: ours (on the fly or merged) or, with --lycoris, LyCORIS's."""

    ours: list[tuple[LoadedLoRA, float]]
    lycoris: list[LycorisFile]


def _check_before_loading(config: GenerateConfig) -> None:
    """What the options cannot check alone: the files they name, the output folder. Before any model loads."""
    named = {
        "dit": config.files.dit,
        "vae": config.files.vae,
        "text_encoder1": config.encoders.text_encoder1,
        "text_encoder2": config.encoders.text_encoder2,
    }
    if config.musubi_output.latent_path:  # decoding only: the DiT and text encoders are not loaded
        named = {"vae": config.files.vae}
    for flag, value in named.items():
        if value is not None and not Path(value).exists():
            raise UserError(f"--{flag} {value}: no such file or folder")
    if Path(config.output.save_path).is_file():
        raise UserError(f"--save_path {config.output.save_path}: is a file, not a folder")


def _read_dit_headers(config: GenerateConfig) -> tuple[DiTConfig, dict[str, tuple[int, int]]]:
    """The DiT's architecture and Linear shapes from its headers (no weights read), its input channels checked
    against --dit_in_channels and --image_path."""
    from hunyuan_model.checkpoint import config_from_state_dict, read_state_dict, to_original_layout
    from hunyuan_model.rope_source import read_rope_split

    dit = config.files.dit
    meta = to_original_layout(read_state_dict(dit, meta=True), dit)
    dit_config = config_from_state_dict(meta, dit, read_rope_split(dit))
    channels, sampling = dit_config.in_channels, config.musubi_sampling
    if sampling.dit_in_channels is not None and sampling.dit_in_channels != channels:
        raise UserError(
            f"--dit_in_channels {sampling.dit_in_channels}: --dit {dit} has {channels} input channels"
        )
    if config.lora_selection.save_merged_model is None:  # merging only: no sampling, no image needed
        if sampling.image_path is not None and channels != I2V_IN_CHANNELS:
            raise UserError(
                f"--image_path needs a SkyReels V1 I2V DiT ({I2V_IN_CHANNELS} input channels); --dit {dit} has "
                f"{channels}"
            )
        if sampling.image_path is None and channels == I2V_IN_CHANNELS:
            raise UserError(
                f"--dit {dit} is an image-to-video DiT ({channels} input channels): give --image_path"
            )
    return dit_config, linear_shapes(meta)


def _load_loras(config: GenerateConfig, dit_config: DiTConfig, shapes) -> LoRAs:
    """The LoRA files, checked against the DiT's headers, each with its --include/--exclude_patterns."""
    from hunyuan_model.model import build_dit

    files, sel = config.lora.lora_weight, config.lora_selection
    if not files:
        return LoRAs([], [])
    mults = config.lora.multipliers()
    filters = filters_for(len(files), sel.include_patterns, sel.exclude_patterns, sel.exclude_single_blocks)
    if sel.lycoris:
        return LoRAs([], load_lycoris_files(files, mults, filters, build_dit(dit_config, device="meta")))
    loaded = load_checked(files, mults, shapes, config.files.dit)
    return LoRAs([(select(lora, rule), m) for (lora, m), rule in zip(loaded, filters, strict=True)], [])


def _without_padding(emb):
    """Drop the padding after the last real token. The DiT masks it out, so the video is the same (see
    test_padding_changes_nothing_but_what_it_should), and a short prompt no longer costs 256 tokens a step."""
    from hunyuan_model.text_encoders import TextEmbeddings

    real = emb.llm_mask.any(dim=0).nonzero()
    keep = int(real.max()) + 1 if len(real) else 1
    return TextEmbeddings(llm=emb.llm[:, :keep], llm_mask=emb.llm_mask[:, :keep], clip_pooled=emb.clip_pooled)


def _encode(
    encoders: TextEncoderOptions, sampling: SamplingOptions, device: torch.device, fp8_llm: bool = False
):
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    models = encoders.load(dtype, device, fp8_llm=fp8_llm)
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


def _load_model(config: GenerateConfig, loras: LoRAs, device: torch.device):
    """The DiT with its LoRAs (merged by LyCORIS or by us, or on the fly), ready to sample."""
    from hunyuan_model.attention import set_attention_backend
    from hunyuan_model.checkpoint import load_dit
    from lora_files.apply import apply_on_the_fly, merge_into

    compute = config.compute
    dtype = _dtypes(compute, device)[0]
    swap = compute.blocks_to_swap and device.type != "cpu"
    merging = config.lora.lora_merge or config.lora_selection.save_merged_model is not None
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
    if loras.lycoris:
        merge_lycoris(model, loras.lycoris)
    if loras.ours and merging:
        merge_into(model, loras.ours)
    elif loras.ours:  # LoRA weights never in fp8
        applied = apply_on_the_fly(model, loras.ours, dtype=dtype if compute.fp8_weights else None)
        for module in applied:  # small: always on the device, also those of swapped blocks
            module.to(device)
    return model


def _save_merged_model(model, path: str) -> Path:
    """--save_merged_model: the DiT with its LoRAs merged, original layout, its RoPE split stated."""
    from hunyuan_model.rope_source import rope_metadata
    from hv_common.safetensors_stream import write_safetensors_streaming

    state = model.state_dict()
    specs = [(key, value.dtype, tuple(value.shape)) for key, value in state.items()]
    metadata = {"format": "pt", **rope_metadata(model.config.rope_dim_list)}
    return write_safetensors_streaming(path, specs, lambda key: state[key].contiguous(), metadata)


@dataclass(frozen=True)
class StartLatents:
    """What sampling starts from besides noise: --video_path's latents, --image_path's (SkyReels I2V)."""

    video: torch.Tensor | None = None
    image: torch.Tensor | None = None


def _start_latents(config: GenerateConfig, seed: int, device: torch.device) -> StartLatents:
    from generation.input_media import encode, read_image, read_video

    sampling, extra = config.sampling, config.musubi_sampling
    if extra.video_path is None and extra.strength != STRENGTH_DEFAULT:
        logger.warning("--strength %g: acts on --video_path only, and none is given", extra.strength)
    if extra.video_path is None and extra.image_path is None:
        return StartLatents()
    assert config.files.vae is not None  # checked: video_path / image_path need --vae
    height, width = sampling.video_size
    vae_dtype = _dtypes(config.compute, device)[1]
    video = image = None
    if extra.video_path is not None:
        frames = read_video(extra.video_path, sampling.video_length, height, width)
        video = encode(config.files.vae, frames, seed, vae_dtype, device)
    if extra.image_path is not None:
        image = encode(config.files.vae, read_image(extra.image_path, height, width), seed, vae_dtype, device)
    return StartLatents(video, image)


def _sample(config: GenerateConfig, model, positive, negative, seed: int, start: StartLatents, device):
    from hunyuan_model.sampler import sample_latents

    compute, sampling, extra = config.compute, config.sampling, config.musubi_sampling
    dtype = _dtypes(compute, device)[0]
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
        split_uncond=_split_uncond(config),
        init_latents=start.video,
        strength=extra.strength,
        image_latents=start.image,
    )
    return latents.cpu()


def _split_uncond(config: GenerateConfig) -> bool:
    """--split_uncond, or --split_attn (which implies it in musubi-tuner); said aloud when it cannot act."""
    split = config.musubi_sampling.split_uncond or config.compute.split_attn
    if config.musubi_sampling.split_uncond and config.sampling.negative_text is None:
        logger.warning(
            "--split_uncond: without --guidance_scale there is one sample a step; nothing to split"
        )
    return split


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


def _steps_run(config: GenerateConfig) -> int:
    steps = config.sampling.infer_steps
    if config.musubi_sampling.video_path is None:
        return steps
    return int(steps * config.musubi_sampling.strength)


def _decode_latent_files(config: GenerateConfig, device: torch.device) -> list[Path]:
    """--latent_path: each file decoded to a video or images, named after it; no sampling."""
    from generation.latent_files import read_latent_file
    from generation.outputs import decode, output_stem, write_decoded

    files = [read_latent_file(path) for path in config.musubi_output.latent_path]  # all checked first
    unused = [
        flag
        for flag, given in (
            ("--lora_weight", config.lora.lora_weight),
            ("--video_path", config.musubi_sampling.video_path),
            ("--image_path", config.musubi_sampling.image_path),
        )
        if given
    ]
    if unused:  # as in musubi-tuner, decoding samples nothing: said, not silently skipped
        logger.warning("--latent_path decodes saved latents only: %s not used", ", ".join(unused))
    vae_dtype = _dtypes(config.compute, device)[1]
    written = []
    for file in files:
        stem = output_stem(config.output, file.seed, suffix=f"_{file.path.stem}")
        written.append(write_decoded(config, decode(config, file.latents, device, vae_dtype), stem))
    return written


def _announce(written: list[Path]) -> int:
    for path in written:
        logger.info("wrote %s", path)
        print(path)
    return 0


def run(config: GenerateConfig) -> int:
    from generation.outputs import latent_metadata, output_stem, write_outputs

    _check_before_loading(config)
    device = pick_device(config.compute.device)
    _dtypes(config.compute, device)  # a bad dtype name fails now, not after minutes of work
    _attention_backend(config.compute, device)  # and a kernel that needs CUDA or fp16/bf16
    if config.compute.fp8_fast:
        from hunyuan_model.fp8_fast import check_fp8_fast

        check_fp8_fast(device)  # fp8 matmuls need an fp8-capable GPU: one line, before anything loads
    if config.musubi_output.latent_path:
        return _announce(_decode_latent_files(config, device))
    dit_config, shapes = _read_dit_headers(config)
    loras = _load_loras(config, dit_config, shapes)
    if config.lora_selection.save_merged_model is not None:  # musubi-tuner: save, then exit: no video
        model = _load_model(config, loras, device)
        return _announce([_save_merged_model(model, config.lora_selection.save_merged_model)])
    seed = config.sampling.seed if config.sampling.seed is not None else secrets.randbelow(2**32)
    logger.info("seed %d", seed)
    positive, negative = _encode(config.encoders, config.sampling, device, config.encoder_memory.fp8_llm)
    start = _start_latents(config, seed, device)
    model = _load_model(config, loras, device)
    latents = _sample(config, model, positive, negative, seed, start, device)
    del model
    gc.collect()
    metadata = latent_metadata(config, seed, _steps_run(config))
    stem = output_stem(config.output, seed)
    return _announce(
        write_outputs(config, latents, stem, metadata, device, _dtypes(config.compute, device)[1])
    )
