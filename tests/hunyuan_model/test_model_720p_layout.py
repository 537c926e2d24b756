"""The 720p preset has exactly the reference checkpoint's keys, shapes and Linears."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hunyuan_model.config import DiTConfig, get_preset, rope_dims_for
from hunyuan_model.model import build_dit

# Every key, shape and Linear of the official t2v 720p checkpoint (mp_rank_00_model_states.pt), read from it once.
REFERENCE = Path(__file__).resolve().parents[1] / "data" / "hunyuan_video_t2v_720p_layout.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    if not REFERENCE.is_file():
        pytest.fail(f"reference layout missing: {REFERENCE}")
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def model_720p():
    start = time.perf_counter()
    model = build_dit(get_preset("hunyuan-video-t2v-720p"))
    print(f"720p meta build: {time.perf_counter() - start:.3f} s")
    return model


def test_720p_state_dict_matches_reference(model_720p, reference):
    ours = {k: list(v.shape) for k, v in model_720p.state_dict().items()}
    assert len(ours) == 856
    assert sorted(ours) == sorted(reference["state_dict"])
    assert ours == reference["state_dict"]


def test_720p_linears_match_reference(model_720p, reference):
    linears = {
        name: [m.in_features, m.out_features]
        for name, m in model_720p.named_modules()
        if isinstance(m, torch.nn.Linear)
    }
    assert len(linears) == 343
    assert linears == reference["linears"]


def test_720p_parameter_count_and_meta(model_720p):
    assert sum(p.numel() for p in model_720p.parameters()) == 12_821_012_544
    assert all(p.is_meta for p in model_720p.parameters())


def test_720p_block_classes(model_720p):
    assert [type(b).__name__ for b in model_720p.double_blocks] == ["MMDoubleStreamBlock"] * 20
    assert [type(b).__name__ for b in model_720p.single_blocks] == ["MMSingleStreamBlock"] * 40


def test_rope_rule_gives_the_real_split():
    assert rope_dims_for(128) == (16, 56, 56)
    for width in (32, 48, 64, 96, 128, 256):
        dims = rope_dims_for(width)
        assert sum(dims) == width and all(d % 2 == 0 for d in dims)


def test_config_rejects_inconsistent_shapes():
    with pytest.raises(ValueError, match="divisible"):
        DiTConfig(hidden_size=100, heads_num=3)
    with pytest.raises(ValueError, match="rope_dim_list"):
        DiTConfig(rope_dim_list=(16, 56, 54))
    with pytest.raises(ValueError, match="unknown DiT preset"):
        get_preset("hunyuan-video-1080p")


def test_import_pulls_in_neither_diffusers_nor_transformers():
    code = (
        "import sys, hunyuan_model, hunyuan_model.model, hunyuan_model.checkpoint, hunyuan_model.tiny;"
        "print(sorted(m for m in ('diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
