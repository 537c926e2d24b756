"""Our trainer beside musubi-tuner's own hv_train_network.py on the same tiny job, on the same machine.

    python bench/vs_musubi.py --musubi ../musubi-tuner --musubi-python ../musubi-bench-venv/bin/python
                              [--rounds 3] [--steps 100] [--keep DIR]

The job is bench/train_tiny.py's (its docstring), with one change both sides share: the DiT's token refiner has
2 blocks, musubi-tuner's fixed depth (our tiny job has 1). One DiT file serves both (the original layout, which
musubi loads strict); the 8 cached items are the same random tensors, written in each trainer's own cache format
(musubi's by its own writers, bench/musubi_runner.py). Each trainer runs in a fresh process as a user runs it:
ours in this python, musubi's in its own environment (--musubi-python: a venv with musubi-tuner's pinned
dependencies and a CPU torch; its checkout goes on PYTHONPATH). bench/musubi_runner.py sets the tiny sizes into
musubi's config dict before calling its main(); see there for what else it sets and why.

Each round runs both, interleaved (the order alternates), and says how many cores other processes kept busy
meanwhile. Figures, as bench/train_tiny.py measures them: first_step_s (spawn -> the end of the first optimizer
step), steps_per_s (the remaining steps; ours up to the final LoRA write, musubi's up to its last optimizer
step), peak_rss_mib (the process and its reaped workers). The best of the rounds is kept (fastest, smallest);
the last stdout line is one JSON object with both sides and the ratios ours/musubi, and, as the floor of
any trainer's first step, the time of a bare `python -c "import torch"` (best of one per round).

Without --musubi (or with a checkout or python that is not there) it says why and skips: the JSON line is
{"skipped": "..."} and the exit code 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import train_tiny as tiny  # noqa: E402

RUNNER = HERE / "musubi_runner.py"
MUSUBI_DATASET = """[general]
resolution = [256, 256]
caption_extension = ".txt"
batch_size = 1

[[datasets]]
video_directory = {videos}
cache_directory = {cache}
target_frames = [5]
frame_extraction = "head"
"""


def musubi_command(dit: Path, dataset_config: Path, output_dir: Path, steps: int) -> list[str]:
    """The same job in musubi-tuner's options (its network module; its DiT dtype defaults to bf16: ours is fp32)."""
    ours = tiny.trainer_command(dit, dataset_config, output_dir, steps)[1:]
    ours[ours.index("networks.lora")] = "musubi_tuner.networks.lora"
    return [str(RUNNER), "train", *ours, "--dit_dtype", "float32"]


def _skip(reason: str) -> None:
    tiny.log(f"skipped: {reason}")
    print(json.dumps({"skipped": reason}))


def _musubi_env(checkout: Path, steps: int) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(checkout / "src"), MUSUBI_BENCH_STEPS=str(steps))
    env.pop("VIRTUAL_ENV", None)
    return env


def _prepare_musubi(folder: Path, python: str, env: dict[str, str]) -> Path:
    cache, videos = folder / "musubi_cache", folder / "musubi_videos"
    videos.mkdir(parents=True, exist_ok=True)  # musubi wants a media folder; training reads only the cache
    subprocess.run([python, str(RUNNER), "cache", str(cache)], env=env, check=True)
    path = folder / "musubi_dataset.toml"
    path.write_text(MUSUBI_DATASET.format(videos=json.dumps(str(videos)), cache=json.dumps(str(cache))))
    return path


def _time_torch_import() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True)
    return time.perf_counter() - start


def _best(runs: list[dict]) -> dict:
    return {
        "first_step_s": round(min(r["first_step_s"] for r in runs), 2),
        "peak_rss_mib": round(min(r["peak_rss_mib"] for r in runs), 1),
        "steps_per_s": round(max(r["steps_per_s"] for r in runs), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--musubi", type=Path, help="a musubi-tuner checkout (with src/musubi_tuner)")
    parser.add_argument(
        "--musubi-python", help="the python of an environment with musubi-tuner's dependencies"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--keep", type=Path, help="write the inputs and outputs here (kept) instead of a temp dir"
    )
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")
    if args.musubi is None:
        return _skip("no musubi-tuner checkout given (--musubi DIR)")
    if not (args.musubi / "src" / "musubi_tuner" / "hv_train_network.py").is_file():
        return _skip(
            f"{args.musubi} is not a musubi-tuner checkout (no src/musubi_tuner/hv_train_network.py)"
        )
    if not args.musubi_python or not Path(args.musubi_python).is_file():
        return _skip("no python for musubi-tuner given (--musubi-python PATH, a venv with its dependencies)")

    env = _musubi_env(args.musubi.resolve(), args.steps)
    with tempfile.TemporaryDirectory(prefix="vs_musubi_") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        dit, _ = tiny.make_dit(folder, refiner_depth=2, rope=(8, 28, 28))
        tiny.make_cache(folder / "cache")
        ours_config = tiny.make_dataset_config(folder, folder / "cache")
        musubi_config = _prepare_musubi(folder, args.musubi_python, env)
        tiny.log(f"inputs in {folder}; musubi-tuner from {args.musubi} run by {args.musubi_python}")

        runs: dict[str, list[dict]] = {"ours": [], "musubi": []}
        busy: dict[str, list[float]] = {"ours": [], "musubi": []}
        torch_imports = []
        for r in range(args.rounds):
            torch_imports.append(_time_torch_import())
            order = ("ours", "musubi") if r % 2 == 0 else ("musubi", "ours")
            for name in order:
                out = folder / f"{name}_out{r}"
                with tiny.Neighbours() as noise:
                    if name == "ours":
                        cmd = tiny.trainer_command(dit, ours_config, out, args.steps)
                        res = tiny.run_trainer(cmd, args.steps)
                    else:
                        cmd = musubi_command(dit, musubi_config, out, args.steps)
                        res = tiny.run_trainer(
                            cmd,
                            args.steps,
                            python=args.musubi_python,
                            last_line="last optimizer step done",
                            env=env,
                        )
                runs[name].append(res)
                busy[name].append(noise.cores)
                tiny.log(
                    f"round {r + 1}: {name:6} first step {res['first_step_s']:.2f} s, "
                    f"{res['steps_per_s']:.2f} steps/s, peak RSS {res['peak_rss_mib']:.0f} MiB; "
                    f"other processes kept {noise.cores:.2f} cores busy"
                )

    ours, musubi = _best(runs["ours"]), _best(runs["musubi"])
    torch_s = min(torch_imports)
    result = {
        "ours": ours,
        "musubi": musubi,
        "ratio": {k: round(ours[k] / musubi[k], 3) for k in ours},
        # the floor of any trainer's first step: torch's import alone, against musubi's first step
        "torch_import_s": round(torch_s, 2),
        "torch_import_vs_musubi_first_step": round(torch_s / musubi["first_step_s"], 3),
        "busy_cores_min": {k: round(min(v), 2) for k, v in busy.items()},
        "rounds": args.rounds,
        "steps": args.steps,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
