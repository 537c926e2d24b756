"""One tiny training run with musubi-tuner's logging, metadata and process options, and what each of them
leaves behind: the hyperparameters TensorBoard got (--log_config), the event file the tracker config named
(--log_tracker_config), the LoRA file's modelspec keys (--metadata_*), torch's flags (--cuda_*), the
Accelerator's DDP kwargs and the start-up line that says they change nothing (--ddp_*), the DiT read without
memory-mapping (--disable_numpy_memmap)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
import yaml
from demo_run import demo_argv
from safetensors import safe_open

pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install -e '.[test]')")

TF32_FLAGS = ("cuda.matmul.allow_tf32", "cudnn.allow_tf32", "cudnn.benchmark")


def _flag(name: str) -> bool:
    owner, _, leaf = name.rpartition(".")
    target = torch.backends
    for part in owner.split("."):
        target = getattr(target, part)
    return bool(getattr(target, leaf))


def _set_flag(name: str, value: bool) -> None:
    owner, _, leaf = name.rpartition(".")
    target = torch.backends
    for part in owner.split("."):
        target = getattr(target, part)
    setattr(target, leaf, value)


@pytest.fixture(scope="module")
def run(cached_demo, tmp_path_factory) -> dict:
    import hunyuan_model.checkpoint
    import hv_train_network
    import training.trainer

    work = tmp_path_factory.mktemp("musubi_options")
    (work / "trackers.toml").write_text('[tensorboard]\nfilename_suffix = ".from_tracker_config"\n')
    argv = demo_argv(
        work / "out",
        "--output_name",
        "opts",
        "--logging_dir",
        str(work / "logs"),
        "--log_config",
        "--log_tracker_config",
        str(work / "trackers.toml"),
        "--metadata_title",
        "My LoRA",
        "--metadata_author",
        "me",
        "--metadata_reso",
        "960,544",
        "--metadata_arch",
        "hunyuan-video-custom",
        "--cuda_allow_tf32",
        "--cuda_cudnn_benchmark",
        "--ddp_static_graph",
        "--ddp_gradient_as_bucket_view",
        "--disable_numpy_memmap",
    )
    saved_flags = {name: _flag(name) for name in TF32_FLAGS}
    for name in TF32_FLAGS:
        _set_flag(name, False)
    built: list = []
    build_run = training.trainer.build_run

    def keep(config):
        result = build_run(config)
        built.append(result)
        return result

    load_dit = hunyuan_model.checkpoint.load_dit
    loads: list[dict] = []

    def spy_load_dit(*args, **kwargs):
        loads.append(kwargs)
        return load_dit(*args, **kwargs)

    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append  # type: ignore[method-assign]
    root, old = logging.getLogger(), Path.cwd()
    level, handlers = root.level, list(root.handlers)
    root.addHandler(collector)
    os.chdir(cached_demo)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(training.trainer, "build_run", keep)
            mp.setattr(hunyuan_model.checkpoint, "load_dit", spy_load_dit)
            assert hv_train_network.main(argv) == 0
        flags = {name: _flag(name) for name in TF32_FLAGS}
    finally:
        os.chdir(old)
        root.setLevel(level)
        root.handlers[:] = handlers
        logging.captureWarnings(False)
        for name, value in saved_flags.items():
            _set_flag(name, value)
    (run_dir,) = (work / "logs").iterdir()
    return {
        "lora": work / "out" / "opts.safetensors",
        "tracker_dir": run_dir / "hv_lora",
        "flags": flags,
        "accelerator": built[0].accelerator,
        "messages": [r.getMessage() for r in records],
        "dit_loads": loads,
    }


def test_log_config_gives_tensorboard_the_options(run):
    (hparams,) = run["tracker_dir"].glob("*/hparams.yml")  # accelerate's TensorBoard tracker writes it
    values = yaml.safe_load(hparams.read_text())
    assert values["output_name"] == "opts" and values["max_train_steps"] == 2 and values["log_config"] is True
    assert values["metadata_reso"] == "960,544"
    assert "dit" not in values and "output_dir" not in values and "logging_dir" not in values


def test_log_tracker_config_reaches_the_tracker(run):
    events = [p.name for p in run["tracker_dir"].glob("events.out.tfevents.*")]
    assert events and all(name.endswith(".from_tracker_config") for name in events)


def test_metadata_options_are_in_the_saved_lora(run):
    with safe_open(str(run["lora"]), framework="pt") as f:
        meta = f.metadata()
    assert meta["modelspec.title"] == "My LoRA"
    assert meta["modelspec.author"] == "me"
    assert meta["modelspec.resolution"] == "960x544"
    assert meta["modelspec.architecture"] == "hunyuan-video-custom/lora"
    assert meta["modelspec.sai_model_spec"] == "1.0.0"
    assert meta["ss_steps"] == "2"


def test_cuda_flags_are_set_by_the_run(run):
    assert run["flags"] == dict.fromkeys(TF32_FLAGS, True)
    assert "TF32 allowed in CUDA matmuls and cuDNN (--cuda_allow_tf32)" in run["messages"]


def test_ddp_flags_reach_the_accelerator_and_are_said_to_change_nothing(run):
    handler = run["accelerator"].ddp_handler
    assert handler is not None and handler.static_graph and handler.gradient_as_bucket_view
    said = [m for m in run["messages"] if m.startswith("--ddp_")]
    assert [m.split()[0] for m in said] == ["--ddp_gradient_as_bucket_view", "--ddp_static_graph"]


def test_disable_numpy_memmap_reads_the_dit_plainly(run):
    assert [load.get("mmap") for load in run["dit_loads"]] == [False]
    assert "reading the DiT with plain reads, not memory-mapped (--disable_numpy_memmap)" in run["messages"]
