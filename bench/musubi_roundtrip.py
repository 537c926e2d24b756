"""One-off check (not CI) that a cache folder serves both tools, with musubi-tuner's own code.

Needs a musubi-tuner checkout (its src/ on the path) and a venv with its dataset dependencies (torch, numpy,
pillow, opencv, av, toml, voluptuous, safetensors); ours runs in this project's venv. In a demo work folder
(demo/ and models/, cached by our commands; see tests/conftest.py cached_demo):

  MUSUBI=../musubi-tuner/src ../musubi-venv/bin/python bench/musubi_roundtrip.py musubi-read WORK
      musubi-tuner's dataset (its TOML parser, prepare_for_training, BucketBatchManager) reads our caches:
      every item, the batch keys its HunyuanVideo trainer uses, latents of the bucket its selector picks
  MUSUBI=../musubi-tuner/src ../musubi-venv/bin/python bench/musubi_roundtrip.py musubi-write WORK
      musubi-tuner's save_latent_cache / save_text_encoder_output_cache, with the names its datasets give,
      write our cached tensors again into WORK/musubi_cache/{images,videos}
  python bench/musubi_roundtrip.py compare WORK
      our trainer's batches from both folders are equal, and one training step gives the same loss

Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOML = "demo/dataset.toml"


def _musubi_src() -> str:
    if "MUSUBI" not in os.environ:
        sys.exit("set MUSUBI to a musubi-tuner checkout's src/ folder (see the docstring)")
    return os.environ["MUSUBI"]


def _musubi_group(toml: str):
    sys.path.insert(0, _musubi_src())
    from musubi_tuner.dataset import config_utils

    user_config = config_utils.load_user_config(toml)
    blueprint = config_utils.BlueprintGenerator(config_utils.ConfigSanitizer()).generate(
        user_config, argparse.Namespace(debug_dataset=False), architecture="hv"
    )
    return config_utils.generate_dataset_group_by_blueprint(blueprint.dataset_group)


def musubi_read(work: Path) -> dict:
    os.chdir(work)
    report = []
    for ds in _musubi_group(TOML).datasets:
        ds.prepare_for_training()
        manager = ds.batch_manager
        items = 0
        for i in range(len(manager)):
            bucket, _ = manager.bucket_batch_indices[i]
            batch = manager[i]
            assert {"latents", "llm", "llm_mask", "clipL"} <= set(batch), sorted(batch)
            w, h = bucket[:2]
            assert tuple(batch["latents"].shape[-2:]) == (h // 8, w // 8), (bucket, batch["latents"].shape)
            assert batch["llm"].shape[1:] == (256, 32) and batch["llm_mask"].shape[1:] == (256,)
            items += batch["latents"].shape[0]
        report.append({"cache_directory": ds.cache_directory, "batches": len(manager), "items": items})
    return {"musubi_read": report}


def musubi_write(work: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    os.chdir(work)
    sys.path.insert(0, _musubi_src())
    from musubi_tuner.dataset.image_video_dataset import save_latent_cache, save_text_encoder_output_cache

    toml = (
        Path(TOML).read_text().replace('cache_directory = "demo/cache/', 'cache_directory = "musubi_cache/')
    )
    Path("musubi.toml").write_text(toml)
    written = {"latents": 0, "text": 0}
    for ds in _musubi_group("musubi.toml").datasets:
        ours = Path("demo/cache") / Path(ds.cache_directory).name
        for _, batch in ds.retrieve_latent_cache_batches(1):
            for item in batch:  # the name musubi-tuner gives the item must be the one our file has
                [latent] = load_file(str(ours / Path(item.latent_cache_path).name)).values()
                save_latent_cache(item, latent)
                written["latents"] += 1
        for batch in ds.retrieve_text_encoder_output_cache_batches(1):
            for item in batch:
                sd = load_file(str(ours / Path(item.text_encoder_output_cache_path).name))
                llm = next(v for k, v in sd.items() if k.startswith("llm_") and k != "llm_mask")
                clip = next(v for k, v in sd.items() if k.startswith("clipL_"))
                save_text_encoder_output_cache(item, llm, sd["llm_mask"].to(torch.int64), True)
                save_text_encoder_output_cache(item, clip, None, False)  # its second pass merges
                written["text"] += 1
    return {"musubi_write": written}


def compare(work: Path) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    os.chdir(work)
    import hv_train_network
    from dataset.config import load_dataset_config
    from dataset.train_dataset import CachedBatches, CachedDatasetSpec

    def batches(toml: str) -> CachedBatches:
        return CachedBatches([CachedDatasetSpec.of(d) for d in load_dataset_config(toml).datasets], seed=3)

    ours, theirs = batches(TOML), batches("musubi.toml")
    assert len(ours) == len(theirs)
    for i in range(len(ours)):
        a, b = ours[i], theirs[i]
        for key in ("latents", "llm", "llm_mask", "clip_pooled"):
            assert torch.equal(a[key], b[key]), (i, key)
    losses = {}
    for label, toml in (("ours", TOML), ("musubi", "musubi.toml")):
        out = work / f"roundtrip_{label}"
        argv = [
            "--config_file",
            str(ROOT / "configs/tiny_demo.toml"),
            "--dit",
            "models/tiny_dit.safetensors",
            "--dataset_config",
            toml,
            "--output_dir",
            str(out),
            "--sample_prompts",
            "",
            "--max_train_steps",
            "1",
            "--save_state",
        ]
        assert hv_train_network.main(argv) == 0
        state = torch.load(out / "tiny_lora-step00000001-state/train_state.pt", weights_only=True)
        losses[label] = state["extra"]["losses"][0]
    return {"batches_equal": len(ours), "first_step_loss": losses}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", choices=["musubi-read", "musubi-write", "compare"])
    parser.add_argument("work", type=Path)
    args = parser.parse_args()
    work = args.work.resolve()
    run = {"musubi-read": musubi_read, "musubi-write": musubi_write, "compare": compare}[args.mode]
    print(json.dumps(run(work)))


if __name__ == "__main__":
    main()
