import sys
from pathlib import Path

# Let tests import the top-level entry scripts (hv_train_network.py, ...) as modules.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import os  # noqa: E402

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

# Hypothesis times every example by default (a 200 ms deadline, the too_slow health check): on one loaded core
# that fails a test for the machine's speed, not for a bug. Examples are judged by their outcome only.
settings.register_profile("no_timing", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("no_timing")

DEMO_CONFIG = "demo/dataset.toml"


def _text_args(*extra: str) -> list[str]:
    return ["--dataset_config", DEMO_CONFIG, "--text_encoder1", "models/text_encoder",
            "--text_encoder2", "models/text_encoder_2", *extra]  # fmt: skip


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
