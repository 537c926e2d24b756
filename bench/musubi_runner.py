"""musubi-tuner's own hv_train_network.py on bench/train_tiny.py's tiny job; bench/vs_musubi.py starts it.

It runs in musubi-tuner's environment (its venv, its checkout on PYTHONPATH) and imports nothing from this
project: we run musubi-tuner's code, we do not copy it.

    python bench/musubi_runner.py cache DIR        the job's random cached tensors, written by musubi's own cache
                                                   writers (its file names, keys and metadata)
    python bench/musubi_runner.py train ARGS...    musubi's main() with ARGS (sys.argv), on the tiny DiT

What the runner sets before calling musubi's code, and why:
  * musubi's DiT config is a fixed 720p dict (HUNYUAN_VIDEO_CONFIG["HYVideo-T/2-cfgdistill"]) and its text
    widths are literals (4096, 768) in load_transformer: the tiny sizes go into that dict and into the call
    load_transformer makes (load_dit_model), nothing else of the model changes.
  * torchvision: musubi imports it at the top of hv_generate_video.py (for sample grids, unused by this job),
    and no CPU build of it can be installed beside a CPU torch here (the registry's wheels need libtorch_cuda).
    An empty module stands in; any use of it fails loudly, so a job that needed it could not pass unnoticed.
  * A global optimizer post-step hook (torch's public API) prints the markers the bench times:
    "first optimizer step done" after the first step, "last optimizer step done" after step STEPS
    (env MUSUBI_BENCH_STEPS).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types
from pathlib import Path

ITEMS = 8
TINY = {
    "mm_double_blocks_depth": 1,
    "mm_single_blocks_depth": 1,
    "rope_dim_list": [8, 28, 28],
    "hidden_size": 128,
    "heads_num": 2,
    "mlp_width_ratio": 4,
}
TEXT_DIMS = (64, 32)  # LLM states width, CLIP pooled width


class _NoTorchvision(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__"):  # introspection (inspect, hasattr) asks for __file__ and the like
            raise AttributeError(name)
        raise RuntimeError(
            f"bench/musubi_runner.py: torchvision.{name} was used, but the bench provides none"
        )


def _stand_in_torchvision() -> None:
    module = _NoTorchvision("torchvision")
    module.__spec__ = importlib.machinery.ModuleSpec("torchvision", None)  # find_spec() wants one
    sys.modules["torchvision"] = module


def write_cache(folder: Path) -> None:
    """The same tensors bench/train_tiny.py's make_cache draws (same generator, same order)."""
    import torch
    from musubi_tuner.dataset.cache_io import save_latent_cache, save_text_encoder_output_cache
    from musubi_tuner.dataset.image_video_dataset import ItemInfo

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    for i in range(ITEMS):
        latents = torch.randn(16, 2, 32, 32, generator=g)
        llm, pooled = torch.randn(32, 64, generator=g), torch.randn(32, generator=g)
        # a video item's key and cache name as musubi's cache_latents.py makes them: frames 0..4 at 256x256
        item = ItemInfo(
            f"clip{i}",
            "a gray square",
            (256, 256),
            frame_count=5,
            latent_cache_path=str(folder / f"clip{i}_00000-005_0256x0256_hv.safetensors"),
        )
        item.text_encoder_output_cache_path = str(folder / f"clip{i}_hv_te.safetensors")
        save_latent_cache(item, latents)
        save_text_encoder_output_cache(item, llm, torch.ones(32, dtype=torch.bool), is_llm=True)
        save_text_encoder_output_cache(item, pooled, None, is_llm=False)


def _set_tiny_dit() -> None:
    import torch
    from musubi_tuner.hunyuan_model import models

    models.HUNYUAN_VIDEO_CONFIG["HYVideo-T/2-cfgdistill"].update(TINY)
    full_size = models.load_dit_model

    def tiny_text_widths(text_states_dim, text_states_dim_2, *args, **kwargs):
        return full_size(*TEXT_DIMS, *args, **kwargs)

    models.load_dit_model = tiny_text_widths

    # musubi's forward builds flash attention's cu_seqlens on "cuda", whatever the device; with --sdpa it is
    # handed on and never read. On a CPU it is built on the mask's device instead (same values).
    def cu_seqlens_beside_the_mask(text_mask, img_len):
        text_len = text_mask.sum(dim=1)
        total = text_mask.shape[1] + img_len
        bounds = [[i * total + int(n) + img_len, (i + 1) * total] for i, n in enumerate(text_len)]
        return torch.tensor(
            [0, *(b for pair in bounds for b in pair)], dtype=torch.int32, device=text_mask.device
        )

    models.get_cu_seqlens = cu_seqlens_beside_the_mask


def _step_markers(steps: int) -> None:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    count = 0

    def marker(optimizer, args, kwargs) -> None:
        nonlocal count
        count += 1
        if count == 1:
            print("first optimizer step done", file=sys.stderr, flush=True)
        if count == steps:
            print("last optimizer step done", file=sys.stderr, flush=True)

    register_optimizer_step_post_hook(marker)


def train(argv: list[str]) -> None:
    _set_tiny_dit()
    _step_markers(int(os.environ["MUSUBI_BENCH_STEPS"]))
    from musubi_tuner.hv_train_network import main

    sys.argv = ["hv_train_network.py", *argv]
    main()


if __name__ == "__main__":
    _stand_in_torchvision()
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "cache":
        write_cache(Path(rest[0]))
    elif mode == "train":
        train(rest)
    else:
        sys.exit(f"musubi_runner.py: unknown mode {mode!r} (cache or train)")
