import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# The entry scripts and tests/helpers/ are importable through pyproject.toml's `pythonpath`.
ROOT = Path(__file__).resolve().parents[1]

# tests/training/ and the like are plain folders: with an __init__.py, pytest would import their files as the
# package `training`, shadowing the code under test.
_INITS = sorted(str(p.relative_to(ROOT)) for p in Path(__file__).parent.rglob("__init__.py"))
if _INITS:
    raise pytest.UsageError(f"tests/ must hold no __init__.py (it would shadow the packages): {_INITS}")

# Hypothesis times every example by default (a 200 ms deadline, the too_slow health check): on one loaded core
# that fails a test for the machine's speed, not for a bug. Examples are judged by their outcome only.
settings.register_profile("no_timing", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("no_timing")

DEMO_CONFIG = "demo/dataset.toml"
# The demo's images alone, cached into {cache}: the cache tests train on it
IMAGES_TOML = """[general]
resolution = [128, 128]
caption_extension = ".txt"
batch_size = 1
enable_bucket = true

[[datasets]]
image_directory = "demo/data/images"
cache_directory = "{cache}"
"""


def _text_args(*extra: str) -> list[str]:
    return [
        "--dataset_config",
        DEMO_CONFIG,
        "--text_encoder1",
        "models/text_encoder",
        "--text_encoder2",
        "models/text_encoder_2",
        *extra,
    ]


@pytest.fixture(scope="session")
def cached_demo(tmp_path_factory) -> Path:
    """A work folder with the demo dataset, the tiny models (models/) and both caches, built once per session.

    Paths inside it are relative, as a user's are: tests chdir into it (monkeypatch.chdir).
    """
    import cache_latents
    import cache_text_encoder_outputs
    from dataset.demo import write_demo
    from hunyuan_model.tiny import write_tiny_dit
    from hunyuan_model.tiny_encoders import write_tiny_clip, write_tiny_llm, write_tiny_vae

    root = tmp_path_factory.mktemp("demo_work")
    old = Path.cwd()
    os.chdir(root)
    try:
        write_demo(Path("demo"))
        write_tiny_dit(Path("models"))
        write_tiny_vae(Path("models/vae"))
        write_tiny_llm(Path("models/text_encoder"))
        write_tiny_clip(Path("models/text_encoder_2"))
        assert (
            cache_latents.main(["--dataset_config", DEMO_CONFIG, "--vae", "models/vae", "--batch_size", "2"])
            == 0
        )
        assert cache_text_encoder_outputs.main(_text_args()) == 0
    finally:
        os.chdir(old)
    return root


@pytest.fixture
def restore_logging():
    """main() sets up logging for a CLI run; leave the root logger as other tests expect it."""
    import logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.setLevel(level)
    root.handlers[:] = handlers
    logging.captureWarnings(False)


@pytest.fixture(scope="session")
def reported_run(cached_demo, tmp_path_factory) -> dict:
    """One short demo run with everything the run report and the trackers show: LoRA+ (two lr groups), saves,
    validation loss, previews (a video and an image; a prompt with HTML in it) and, when tensorboard is
    installed, --log_with tensorboard. Shared by tests/run_report/ (test_page.py, test_loss_plot.py) and
    tests/training/test_trainer_tensorboard.py."""
    import importlib.util
    import logging

    import hv_train_network

    work = tmp_path_factory.mktemp("reported_run")
    (work / "dataset.toml").write_text(  # train on the videos, validate on the images (both cached already)
        '[general]\nresolution = [128, 128]\ncaption_extension = ".txt"\nbatch_size = 1\nenable_bucket = true\n'
        '[[datasets]]\nvideo_directory = "demo/data/videos"\ncache_directory = "demo/cache/videos"\n'
        'target_frames = [1, 9, 17]\nframe_extraction = "head"\n'
        '[[validation_datasets]]\nimage_directory = "demo/data/images"\ncache_directory = "demo/cache/images"\n'
    )
    (work / "prompts.txt").write_text(
        "<script>document.title='injected'</script> a red & \"square\" --w 64 --h 64 --f 5 --s 2 --d 1\n"
        "a blue ball --w 64 --h 64 --f 1 --s 2 --d 2\n"
    )
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    logs = ["--log_with", "tensorboard", "--logging_dir", str(work / "logs")] if tensorboard else []
    argv = [
        "--config_file",
        str(ROOT / "configs" / "tiny_demo.toml"),
        "--dit",
        "models/tiny_dit.safetensors",
        "--vae",
        "models/vae",
        "--text_encoder1",
        "models/text_encoder",
        "--text_encoder2",
        "models/text_encoder_2",
        "--dataset_config",
        str(work / "dataset.toml"),
        "--output_dir",
        str(work / "out"),
        "--sample_prompts",
        str(work / "prompts.txt"),
        "--max_train_steps",
        "8",
        "--save_every_n_steps",
        "4",
        "--sample_every_n_steps",
        "4",
        "--validate_every_n_steps",
        "4",
        *logs,
    ]
    from run_report.page import RunReport

    snapshots = []  # (step, status, the page as written): what a run killed after that write would leave
    write = RunReport.write

    def write_and_keep(self, step, status):
        path = write(self, step, status)
        snapshots.append((step, status, path.read_text(encoding="utf-8")))
        return path

    root, old = logging.getLogger(), Path.cwd()
    level, handlers = root.level, list(root.handlers)
    os.chdir(cached_demo)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(RunReport, "write", write_and_keep)
            assert hv_train_network.main(argv) == 0
    finally:
        os.chdir(old)
        root.setLevel(level)
        root.handlers[:] = handlers
        logging.captureWarnings(False)
    return {
        "out": work / "out",
        "logs": work / "logs" if tensorboard else None,
        "name": "tiny_lora",
        "snapshots": snapshots,
    }


# The hostile-input tests' corpora (tests/e2e/test_hostile_*.py), built once per test file in tmp_path.
@pytest.fixture(scope="module")
def tiny_dit(tmp_path_factory) -> Path:
    from hunyuan_model.tiny import write_tiny_dit

    return write_tiny_dit(tmp_path_factory.mktemp("dit"))


@pytest.fixture(scope="module")
def lora_corpus(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    from hostile_files import bad_loras

    return bad_loras(tmp_path_factory.mktemp("loras"))


@pytest.fixture(scope="module")
def dit_corpus(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    from hostile_files import bad_dits

    return bad_dits(tmp_path_factory.mktemp("dits"))


@pytest.fixture
def tiny_files(tmp_path):
    """(the tiny DiT file, a LoRA file for it in our layout): the tests of lora_files/."""
    from lora_file_testing import DIM, trained_network

    from hunyuan_model.checkpoint import load_dit
    from hunyuan_model.tiny import write_tiny_dit
    from lora_files.io import save_network

    dit = write_tiny_dit(tmp_path / "models")
    network = trained_network(load_dit(dit))
    lora = tmp_path / "lora.safetensors"
    save_network(network, str(lora), metadata={"ss_network_dim": str(DIM)})
    return dit, lora


@pytest.fixture
def media(tmp_path: Path) -> Path:
    """image_dir (2 images), video_dir (one 50-frame clip), metadata.jsonl files, each item captioned: the
    dataset config tests' media (tests/dataset/test_config.py, test_config_errors.py)."""
    import json

    import numpy as np
    from PIL import Image

    from dataset.demo import write_clip

    images, videos = tmp_path / "image_dir", tmp_path / "video_dir"
    images.mkdir()
    videos.mkdir()
    Image.new("RGB", (192, 108), (200, 30, 30)).save(images / "wide.png")
    Image.new("RGB", (100, 200), (30, 30, 200)).save(images / "tall.jpg")
    frames = [np.full((64, 112, 3), 4 * i, dtype=np.uint8) for i in range(50)]  # 1.75: the 960x544 bucket
    write_clip(videos / "clip.mp4", frames, 24)
    for path in [images / "wide.png", images / "tall.jpg", videos / "clip.mp4"]:
        path.with_suffix(".txt").write_text(f"a caption for {path.stem}\n", encoding="utf-8")
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"image_path": str(images / "wide.png"), "caption": "from jsonl"}) + "\n", encoding="utf-8"
    )
    (tmp_path / "video_metadata.jsonl").write_text(
        json.dumps({"video_path": str(videos / "clip.mp4"), "caption": "a clip from jsonl"}) + "\n",
        encoding="utf-8",
    )
    return tmp_path
