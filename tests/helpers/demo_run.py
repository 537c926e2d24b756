"""The tiny demo's training command line, for tests that train (run inside the `cached_demo` folder:
`monkeypatch.chdir(cached_demo)`).

    assert hv_train_network.main(demo_argv(tmp_path / "out", "--max_train_steps", "2")) == 0
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_CONFIG = ROOT / "configs" / "tiny_demo.toml"


def demo_argv(output_dir: Path, *extra: str, steps: int = 2) -> list[str]:
    """Train the tiny DiT on the cached demo for `steps` steps into `output_dir`, without sample previews;
    `extra` comes last, so it overrides any of these."""
    return [
        "--config_file",
        str(TINY_CONFIG),
        "--dit",
        "models/tiny_dit.safetensors",
        "--dataset_config",
        "demo/dataset.toml",
        "--vae",
        "models/vae",
        "--text_encoder1",
        "models/text_encoder",
        "--text_encoder2",
        "models/text_encoder_2",
        "--output_dir",
        str(output_dir),
        "--sample_prompts",
        "",
        "--max_train_steps",
        str(steps),
        *extra,
    ]
