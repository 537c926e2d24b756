"""The tiny models and command line of hv_generate_video.py tests: a DiT, VAE, both text encoders and a LoRA
with a non-zero update; LoHa / LoKr files for --lycoris; one command line with the small video every test uses."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

PROMPT = "a red ball rolls across a blue floor"


def write_models(root: Path) -> dict[str, Path]:
    from lora_testing import tiny_network

    from hunyuan_model.checkpoint import load_dit
    from hunyuan_model.tiny import write_tiny_dit
    from hunyuan_model.tiny_encoders import write_tiny_clip, write_tiny_llm, write_tiny_vae
    from lora_files.io import save_network

    paths = {
        "dit": write_tiny_dit(root),
        "vae": write_tiny_vae(root / "vae"),
        "te1": write_tiny_llm(root / "text_encoder"),
        "te2": write_tiny_clip(root / "text_encoder_2"),
    }
    network = tiny_network(load_dit(paths["dit"]), dim=4, alpha=2.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for lora in network.loras:
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=g) * 0.2)
    paths["lora"] = root / "lora.safetensors"
    save_network(network, str(paths["lora"]))
    return paths


def generate_argv(models: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "--dit",
        str(models["dit"]),
        "--vae",
        str(models["vae"]),
        "--text_encoder1",
        str(models["te1"]),
        "--text_encoder2",
        str(models["te2"]),
        "--prompt",
        PROMPT,
        "--video_size",
        "32",
        "48",
        "--video_length",
        "5",
        "--infer_steps",
        "3",
        "--save_path",
        str(out),
        *extra,
    ]


def write_loha(path: Path, modules: dict[str, tuple[int, int]], rank: int = 2, alpha: float = 1.0) -> Path:
    """A LoHa file (LyCORIS's hada_* keys) for {module name: (out, in)}; seeded, non-zero update."""
    g = torch.Generator().manual_seed(3)
    tensors = {}
    for name, (out, inp) in modules.items():
        key = "lora_unet_" + name.replace(".", "_")
        for part in ("1", "2"):
            tensors[f"{key}.hada_w{part}_a"] = torch.randn(out, rank, generator=g) * 0.3
            tensors[f"{key}.hada_w{part}_b"] = torch.randn(rank, inp, generator=g) * 0.3
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, path)
    return path


def lycoris_delta(path: Path, name: str, base: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
    """What LyCORIS itself adds to a Linear of weight `base` for module `name` of the file, at `multiplier`."""
    from lycoris.kohya import create_network_from_weights
    from safetensors.torch import load_file
    from torch import nn

    key = "lora_unet_" + name.replace(".", "_")
    sd = {k: v for k, v in load_file(path).items() if k.startswith(key + ".")}
    holder = nn.Module()
    holder.add_module(name.replace(".", "_"), nn.Linear(base.shape[1], base.shape[0], bias=False))
    linear = holder.get_submodule(name.replace(".", "_"))
    with torch.no_grad():
        linear.weight.copy_(base)
        network, _ = create_network_from_weights(multiplier, None, None, None, holder, weights_sd=sd)
        (module,) = network.unet_loras
        module.merge_to(multiplier)
    return linear.weight.detach() - base


def ratio_to_multiplier_one(path: Path, name: str, base: torch.Tensor, multiplier: float) -> float:
    """LyCORIS's update at `multiplier` over its update at 1 (the multiplier's effect)."""
    at_one = lycoris_delta(path, name, base, 1.0)
    return float((lycoris_delta(path, name, base, multiplier) * at_one).sum() / (at_one * at_one).sum())


def write_i2v_dit(root: Path) -> Path:
    """The tiny DiT with SkyReels V1 I2V's 32 input channels (noisy latents + the image's), seeded."""
    import dataclasses

    from hunyuan_model.config import get_preset
    from hunyuan_model.model import build_dit
    from hunyuan_model.rope_source import rope_metadata
    from hv_common.safetensors_stream import write_safetensors_streaming

    config = dataclasses.replace(get_preset("tiny"), in_channels=32)
    torch.manual_seed(0)
    sd = {
        k: v.contiguous()
        for k, v in build_dit(config, device="cpu", dtype=torch.float32).state_dict().items()
    }
    specs = [(k, v.dtype, tuple(v.shape)) for k, v in sd.items()]
    metadata = {"format": "pt", **rope_metadata(config.rope_dim_list)}
    return write_safetensors_streaming(root / "tiny_i2v_dit.safetensors", specs, sd.__getitem__, metadata)
