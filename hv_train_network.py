"""Train a LoRA for HunyuanVideo: parse, build, run. Thin on purpose; the work lives in training/.

accelerate launch hv_train_network.py --config_file configs/tiny_demo.toml       (train; see docs/training.md)
python hv_train_network.py --list_lora_targets [table|json] [--dit W] --network_dim 32 --network_args ...
python hv_train_network.py --debug_dataset --dataset_config D                     (what the batches hold)
python hv_train_network.py --config_file C --estimate_memory [--vram_budget_gb 24]  (GPU memory, estimated)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence


def run(argv: Sequence[str] | None) -> int:
    from training.args import parse_args

    config = parse_args(argv)  # argparse errors exit 2 with one line
    if config.modes.debug_dataset:
        from training.debug_dataset import show_batches

        return show_batches(config)
    if config.modes.estimate_memory:
        from training.estimate_memory import render as render_estimate

        print(render_estimate(config))  # shapes only: no weights, VAE or text encoder is read
        return 0
    if config.modes.list_lora_targets is None:
        from training.trainer import train

        return train(config)
    from training.list_targets import render

    with contextlib.redirect_stdout(sys.stderr):  # stray prints must not corrupt the JSON on stdout
        text = render(config)
    print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from hv_common.cli import run_command

    return run_command(run, argv)


if __name__ == "__main__":
    sys.exit(main())
