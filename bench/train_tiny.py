"""The whole trainer on musubi-tuner's measured tiny job, against the bare physics of the same job.

The job (musubi-tuner's measured tiny job): DiT hidden 128, 2 heads, 1 double + 1 single block, head width 64, 8 cached
items of 256x256x5 frames (latents 16x2x32x32; LLM states 32 x 64; CLIP pooled 32), LoRA rank 4 alpha 4,
LoRA+ ratio 4, single blocks excluded, shift sampling 7.0, AdamW lr 1e-4, fp32, SDPA, batch 1, 2 loader
workers, 200 steps.
Random weights and random cached tensors written to a temporary folder (no VAE, no text encoders). The DiT
is built with rope (16, 24, 24), but a checkpoint does not store the split and loading re-derives it from the
head width (rope_dims_for(64) = (8, 28, 28)): trainer and floor both run the loaded model (same cost).

    python bench/train_tiny.py [--rounds 2] [--steps 200] [--keep DIR] [--profile FILE.prof]
                               [--trainer-args="..."]

Each round, interleaved:
  import      a fresh `python -c "import torch, accelerate, training.trainer, ..."`, timed from outside.
  trainer     `python hv_train_network.py --dit ... --dataset_config ... (the job)` in a fresh process, as a
              user runs it. first_step_s: spawn -> the stderr line "first optimizer step done" arrives.
              steps_per_s: (steps - 1) / (that line -> the trainer's "saved <lora>.safetensors" line): the
              remaining steps with everything the loop does (DataLoader and its 2 workers, re-created each
              8-batch epoch, tqdm, LR scheduler, gradient clipping at the default --max_grad_norm 1.0) plus
              the final LoRA write (milliseconds). Not timed: start-up, the first step, the loss plot, exit.
              peak_rss_mib: ru_maxrss of that child from os.wait4 (its own and its reaped workers' peak).
  floor       in this process: the same DiT file loaded with load_dit, the same LoRA (create_network with the
              same --network_args, apply_to, prepare_optimizer_params), torch.optim.AdamW; the 8 cached items
              already in memory; each step is noise + t (training.flow, shift 7.0) + forward + flow_loss +
              backward + optimizer step + zero_grad, nothing else (no clipping, no scheduler, no loader).
              floor_steps_per_s: (steps - 1) / (end of step 1 -> end of the last step), as for the trainer.
The best of the rounds is reported (fastest, smallest); trainer_vs_floor = steps_per_s / floor_steps_per_s.
Progress goes to stderr; the last line on stdout is one JSON object.
--profile FILE runs one more trainer under cProfile (after the rounds, not timed) and writes FILE;
--trainer-args="..." appends options to every trainer command (e.g. --trainer-args="--max_grad_norm=0").
Each variant's log line says how many cores other processes kept busy meanwhile (from /proc/stat less this
process tree's CPU time): on a shared 2-core machine one busy neighbour slows a 2-thread step several times
over, so trust rounds where that figure is near 0 and rerun otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dataset.cache_files import write_latent_cache, write_text_cache  # noqa: E402
from dataset.cache_names import latent_cache_name, text_cache_name  # noqa: E402
from hunyuan_model.checkpoint import load_dit, read_dit_config  # noqa: E402
from hunyuan_model.config import DEFAULT_EXCLUDE_PATTERNS, TARGET_BLOCK_CLASSES, DiTConfig  # noqa: E402
from hunyuan_model.model import build_dit  # noqa: E402
from networks.lora import create_network  # noqa: E402
from training.flow import FlowSettings, flow_loss, noisy_input, sample_t  # noqa: E402

ITEMS, RANK, ALPHA, LR, SHIFT = 8, 4, 4, 1e-4, 7.0
NETWORK_ARGS = ["loraplus_lr_ratio=4", "exclude_patterns=[r'.*single_blocks.*']"]
ROPE_ASKED = (16, 24, 24)
MODULES = (
    "torch, accelerate, training.trainer, hunyuan_model.checkpoint, networks.lora, dataset.train_dataset"
)
IMPORTS = f"import {MODULES}"
FIRST_STEP = "first optimizer step done"


def _busy_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux; 0 elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Neighbours:
    """How many cores other processes kept busy while a variant ran: the noise figure of that variant."""

    def __enter__(self) -> Neighbours:
        self.t, self.busy, self.own = time.perf_counter(), _busy_s(), sum(os.times()[:4])
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self.t
        others = (_busy_s() - self.busy) - (sum(os.times()[:4]) - self.own)
        self.cores = max(0.0, others / wall) if wall > 0 else 0.0


def log(msg: str) -> None:
    print(f"[train_tiny] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- inputs


def make_dit(
    folder: Path, refiner_depth: int = 1, rope: tuple[int, int, int] = ROPE_ASKED
) -> tuple[Path, DiTConfig]:
    """bench/vs_musubi.py asks for musubi-tuner's fixed refiner depth (2) and the rope split both load."""
    cfg = DiTConfig(
        hidden_size=128,
        heads_num=2,
        mm_double_blocks_depth=1,
        mm_single_blocks_depth=1,
        rope_dim_list=rope,
        text_states_dim=64,
        text_states_dim_2=32,
        refiner_depth=refiner_depth,
    )
    torch.manual_seed(0)
    model = build_dit(cfg, device="cpu")  # PyTorch's default init, seeded
    path = folder / "tiny_dit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, read_dit_config(path)


def make_cache(folder: Path) -> list[dict[str, torch.Tensor]]:
    """The 8 cached items (as cache_latents.py / cache_text_encoder_outputs.py write them) and, for the floor,
    the same tensors as batches of 1 in memory."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(ITEMS):
        key = f"clip{i}"
        latents = torch.randn(16, 2, 32, 32, generator=g)
        llm, pooled = torch.randn(32, 64, generator=g), torch.randn(32, generator=g)
        write_latent_cache(
            folder / latent_cache_name(key, 256, 256, start_frame=0, frame_count=5),
            latents,
            (256, 256),
            5,
            {},
        )
        write_text_cache(folder / text_cache_name(key), llm, torch.ones(32), pooled, key, {})
        mask = torch.ones(1, 32, dtype=torch.bool)
        batches.append(
            {"latents": latents[None], "llm": llm[None], "llm_mask": mask, "clip_pooled": pooled[None]}
        )
    return batches


def make_dataset_config(folder: Path, cache: Path) -> Path:
    """A video dataset whose media is not there (the job has only caches): the trainer then trains every cache
    file in the folder, as musubi-tuner does, after one warning."""
    path = folder / "dataset.toml"
    path.write_text(
        '[general]\nresolution = [256, 256]\ncaption_extension = ".txt"\nbatch_size = 1\n\n'
        f"[[datasets]]\nvideo_directory = {json.dumps(str(folder / 'videos'))}\ntarget_frames = [5]\n"
        f"cache_directory = {json.dumps(str(cache))}\n",
        encoding="utf-8",
    )
    return path


# ---------------------------------------------------------------- the variants


def time_import() -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", IMPORTS], cwd=ROOT, check=True)
    return time.perf_counter() - start


def trainer_command(dit: Path, dataset_config: Path, output_dir: Path, steps: int) -> list[str]:
    """The job's command line, as a musubi-tuner user writes it."""
    return [
        "hv_train_network.py",
        "--dit",
        str(dit),
        "--dataset_config",
        str(dataset_config),
        "--output_dir",
        str(output_dir),
        "--output_name",
        "tiny",
        "--sdpa",
        "--mixed_precision",
        "no",
        "--network_module",
        "networks.lora",
        "--network_dim",
        str(RANK),
        "--network_alpha",
        str(ALPHA),
        "--network_args",
        *NETWORK_ARGS,
        "--optimizer_type",
        "AdamW",
        "--learning_rate",
        str(LR),
        "--timestep_sampling",
        "shift",
        "--discrete_flow_shift",
        str(SHIFT),
        "--max_train_steps",
        str(steps),
        "--max_data_loader_n_workers",
        "2",
        "--seed",
        "0",
    ]


def _read_lines(stream, sink: list[tuple[float, str]]) -> None:
    """Every stderr line (tqdm's \\r updates count as lines) with the time it arrived."""
    pending = b""
    while chunk := os.read(stream.fileno(), 65536):
        now = time.perf_counter()
        pending += chunk
        *lines, pending = re.split(rb"[\r\n]", pending)
        sink.extend((now, line.decode("utf-8", "replace")) for line in lines if line)
    if pending:
        sink.append((time.perf_counter(), pending.decode("utf-8", "replace")))


SAVED = r"saved \S*tiny\.safetensors"


def run_trainer(
    cmd: list[str],
    steps: int,
    python_prefix: tuple[str, ...] = (),
    *,
    python: str = sys.executable,
    last_line: str = SAVED,
    env: dict[str, str] | None = None,
) -> dict:
    """last_line: the stderr line (a regex) that closes the timed steps (bench/vs_musubi.py times musubi-tuner's own
    hv_train_network.py with its python and its own markers)."""
    lines: list[tuple[float, str]] = []
    start = time.perf_counter()
    proc = subprocess.Popen(
        [python, *python_prefix, *cmd], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    reader = threading.Thread(target=_read_lines, args=(proc.stderr, lines), daemon=True)
    reader.start()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the sum of every child so far
    end = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    proc.stderr.close()
    text = "\n".join(line for _, line in lines)
    if proc.returncode != 0:
        raise RuntimeError(f"the trainer exited {proc.returncode}:\n{text[-6000:]}")
    first = next((t for t, line in lines if FIRST_STEP in line), None)
    saved = next((t for t, line in lines if re.search(last_line, line)), None)
    if first is None or saved is None:
        raise RuntimeError(f"the trainer's log lacks {FIRST_STEP!r} or {last_line!r}:\n{text[-6000:]}")
    return {
        "first_step_s": first - start,
        "steps_per_s": (steps - 1) / (saved - first),
        "loop_s": saved - first,
        "tail_s": end - saved,
        "peak_rss_mib": usage.ru_maxrss / 1024,
        "log": text,
    }


def run_floor(dit: Path, batches: list[dict[str, torch.Tensor]], steps: int) -> dict:
    torch.manual_seed(0)
    model = load_dit(dit, dtype=torch.float32, device="cpu")
    model.requires_grad_(False)
    network = create_network(
        1.0,
        RANK,
        ALPHA,
        model,
        target_block_classes=TARGET_BLOCK_CLASSES,
        default_exclude_patterns=DEFAULT_EXCLUDE_PATTERNS,
        network_args=NETWORK_ARGS,
    )
    network.apply_to(model)
    network.train()
    optimizer = torch.optim.AdamW(network.prepare_optimizer_params(LR), lr=LR)
    flow = FlowSettings(timestep_sampling="shift", discrete_flow_shift=SHIFT)
    guidance = torch.full((1,), 1000.0)
    marks = []
    start = time.perf_counter()
    for step in range(steps):
        batch = batches[step % len(batches)]
        latents = batch["latents"]
        noise = torch.randn(latents.shape)
        t = sample_t(flow, latents)
        x_t, target = noisy_input(latents, noise, t)
        pred = model(x_t, t * 1000.0, batch["llm"], batch["llm_mask"], batch["clip_pooled"], guidance)
        loss = flow_loss(pred, target, None)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
    network.restore()
    return {
        "first_step_s": marks[0] - start,
        "steps_per_s": (steps - 1) / (marks[-1] - marks[0]),
        "loss": float(loss.detach()),
    }


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument(
        "--keep", type=Path, help="write the inputs and outputs here (kept) instead of a temp dir"
    )
    parser.add_argument(
        "--profile", type=Path, help="also run the trainer once under cProfile, stats to FILE"
    )
    parser.add_argument(
        "--trainer-args", default="", help='appended to the trainer\'s command, e.g. "--max_grad_norm=0"'
    )
    args = parser.parse_args()
    if args.steps < 2:
        parser.error("--steps must be at least 2")

    with tempfile.TemporaryDirectory(prefix="train_tiny_") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        dit, loaded = make_dit(folder)
        if loaded.rope_dim_list != ROPE_ASKED:
            log(
                f"note: the DiT was built with rope {list(ROPE_ASKED)}, but the checkpoint loader derives "
                f"{list(loaded.rope_dim_list)} from head width {loaded.head_dim} (rope_dims_for); "
                "trainer and floor both run what loads"
            )
        cache = folder / "cache"
        batches = make_cache(cache)
        dataset_config = make_dataset_config(folder, cache)
        log(f"inputs in {folder}; torch {torch.__version__}, {torch.get_num_threads()} threads")

        extra = shlex.split(args.trainer_args)
        imports, trainers, floors = [], [], []
        for r in range(args.rounds):
            imports.append(time_import())
            log(f"round {r + 1}: import {imports[-1]:.2f} s")
            out = folder / f"out{r}"
            with Neighbours() as busy:
                res = run_trainer(trainer_command(dit, dataset_config, out, args.steps) + extra, args.steps)
            trainers.append(res)
            log(
                f"round {r + 1}: trainer {res['steps_per_s']:.2f} steps/s, "
                f"first step {res['first_step_s']:.2f} s, "
                f"peak RSS {res['peak_rss_mib']:.0f} MiB, after the LoRA write {res['tail_s']:.2f} s; "
                f"other processes kept {busy.cores:.2f} cores busy"
            )
            with Neighbours() as busy_floor:
                fl = run_floor(dit, batches, args.steps)
            floors.append(fl)
            log(
                f"round {r + 1}: floor {fl['steps_per_s']:.2f} steps/s "
                f"(first step {fl['first_step_s']:.3f} s); "
                f"other processes kept {busy_floor.cores:.2f} cores busy"
            )

        if args.profile:
            out = folder / "out_profile"
            prof = ("-m", "cProfile", "-o", str(args.profile.resolve()))
            run_trainer(trainer_command(dit, dataset_config, out, args.steps) + extra, args.steps, prof)
            log(f"profile written to {args.profile}")

    steps_per_s = max(t["steps_per_s"] for t in trainers)
    floor = max(f["steps_per_s"] for f in floors)
    result = {
        "steps_per_s": round(steps_per_s, 2),
        "floor_steps_per_s": round(floor, 2),
        "trainer_vs_floor": round(steps_per_s / floor, 3),
        "import_s": round(min(imports), 2),
        "first_step_s": round(min(t["first_step_s"] for t in trainers), 2),
        "peak_rss_mib": round(min(t["peak_rss_mib"] for t in trainers), 1),
        "rounds": args.rounds,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
