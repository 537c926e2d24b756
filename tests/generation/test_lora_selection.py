"""Which LoRA modules hv_generate_video.py applies: --include_patterns / --exclude_patterns (one per file, a
pattern matches a whole module name), --exclude_single_blocks, and --lycoris; shown on the weights
--save_merged_model writes (merged = base + the kept modules' updates, nothing else) and on a video's latents."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from generate_testing import generate_argv, lycoris_delta, ratio_to_multiplier_one, write_loha, write_models
from safetensors.torch import load_file

import hv_generate_video
from generation.lora_selection import ModuleFilter, filters_for, kept_modules
from lora_files.io import load_lora

NAMES = ["double_blocks.0.img_attn_qkv", "double_blocks.0.img_mlp.fc1", "single_blocks.0.linear1"]


def test_a_pattern_must_match_the_whole_name_and_says_so_when_it_matches_only_a_part(caplog):
    assert kept_modules(NAMES, ModuleFilter(include=r"double_blocks\.0\..*"), "f") == NAMES[:2]
    assert kept_modules(NAMES, ModuleFilter(exclude=r".*_mlp\..*"), "f") == [NAMES[0], NAMES[2]]
    assert kept_modules(NAMES, ModuleFilter(exclude_single_blocks=True), "f") == NAMES[:2]
    with caplog.at_level(logging.WARNING):
        assert kept_modules(NAMES, ModuleFilter(include="img_attn"), "f") == []
    assert "matches module names only in part" in caplog.text and "'.*img_attn.*'" in caplog.text


def test_the_ith_pattern_belongs_to_the_ith_file_and_later_files_are_whole():
    filters = filters_for(2, ["a"], [], exclude_single_blocks=True)
    assert filters == [ModuleFilter("a", None, True), ModuleFilter(None, None, True)]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return write_models(tmp_path_factory.mktemp("selection"))


def _merged_deltas(models, tmp_path: Path, *extra: str) -> dict[str, torch.Tensor]:
    """{weight key: merged - base} of every weight --save_merged_model changed."""
    out = tmp_path / "merged.safetensors"
    argv = generate_argv(models, tmp_path / "videos", "--save_merged_model", str(out), *extra)
    assert hv_generate_video.main(argv) == 0
    assert not (tmp_path / "videos").exists()  # merged and saved, then exit: no video
    base, merged = load_file(models["dit"]), load_file(out)
    assert base.keys() == merged.keys()
    return {k: merged[k] - base[k] for k in base if not torch.equal(merged[k], base[k])}


def _lora_delta(models, name: str, multiplier: float = 1.0) -> torch.Tensor:
    return load_lora(models["lora"]).weights[name].delta(multiplier, torch.device("cpu"))


def test_include_then_exclude_select_the_modules_merged(models, tmp_path):
    lora = ["--lora_weight", str(models["lora"]), "--lora_multiplier", "0.5"]
    deltas = _merged_deltas(
        models,
        tmp_path,
        *lora,
        "--include_patterns",
        r"double_blocks\.0\..*",
        "--exclude_patterns",
        r".*_mlp\..*",
    )
    expected = [
        n for n in load_lora(models["lora"]).weights if n.startswith("double_blocks.0.") and "_mlp." not in n
    ]
    assert expected and sorted(deltas) == sorted(f"{n}.weight" for n in expected)
    for name in expected:
        torch.testing.assert_close(
            deltas[f"{name}.weight"], _lora_delta(models, name, 0.5), atol=1e-6, rtol=1e-4
        )


def test_exclude_single_blocks_and_patterns_pair_with_files_in_order(models, tmp_path):
    lora = str(models["lora"])
    deltas = _merged_deltas(
        models, tmp_path, "--lora_weight", lora, lora, "--include_patterns", r"double_blocks\.0\..*"
    )
    every = list(load_lora(models["lora"]).weights)
    assert sorted(deltas) == sorted(f"{n}.weight" for n in every)  # the second file whole
    for name in every:  # the first file only on double_blocks.0: its modules get both updates
        times = 2.0 if name.startswith("double_blocks.0.") else 1.0
        torch.testing.assert_close(
            deltas[f"{name}.weight"], _lora_delta(models, name, times), atol=1e-6, rtol=1e-4
        )
    no_single = _merged_deltas(models, tmp_path, "--lora_weight", lora, "--exclude_single_blocks")
    assert no_single and all(k.startswith("double_blocks.") for k in no_single)
    assert any(n.startswith("single_blocks.") for n in every)


def test_lycoris_merges_a_loha_file_with_its_patterns_and_changes_the_video(models, tmp_path):
    modules = {"double_blocks.0.img_attn_qkv": (192, 64), "single_blocks.1.linear2": (64, 320)}
    loha = write_loha(tmp_path / "loha.safetensors", modules)
    deltas = _merged_deltas(
        models, tmp_path, "--lora_weight", str(loha), "--lora_multiplier", "0.7", "--lycoris"
    )
    assert sorted(deltas) == sorted(f"{n}.weight" for n in modules)
    base = load_file(models["dit"])
    for name in modules:  # what LyCORIS computes, at the file's multiplier
        expected = lycoris_delta(loha, name, base[f"{name}.weight"], 0.7)
        torch.testing.assert_close(deltas[f"{name}.weight"], expected, atol=1e-6, rtol=1e-4)
        assert ratio_to_multiplier_one(loha, name, base[f"{name}.weight"], 0.7) == pytest.approx(0.7)
    only = _merged_deltas(
        models, tmp_path, "--lora_weight", str(loha), "--lycoris", "--exclude_single_blocks"
    )
    assert list(only) == ["double_blocks.0.img_attn_qkv.weight"]
    for name, extra in (("plain", []), ("loha", ["--lora_weight", str(loha), "--lycoris"])):
        argv = generate_argv(
            models, tmp_path, "--seed", "5", "--output_type", "latent", "--output_name", name, *extra
        )
        assert hv_generate_video.main(argv) == 0
    plain, with_loha = (load_file(tmp_path / f"{n}_latent.safetensors")["latent"] for n in ("plain", "loha"))
    assert (plain - with_loha).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--include_patterns", "x"], "1 patterns for 0 --lora_weight files"),
        (["--lora_weight", "{lora}", "--exclude_patterns", "(", ")"], "2 patterns for 1 --lora_weight"),
        (["--lora_weight", "{lora}", "--include_patterns", "("], "not a regular expression"),
        (["--lycoris"], "--lycoris needs --lora_weight"),
        (["--save_merged_model", "{tmp}/m.safetensors"], "--save_merged_model needs --lora_weight"),
        (["--lora_weight", "{lora}", "--lycoris", "--fp8"], "drop --fp8"),
        (["--lora_weight", "{foreign}", "--lycoris"], "are not the DiT's"),
    ],
)
def test_bad_selection_is_one_line_exit_2(models, tmp_path, capsys, extra, expected):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.ones(4, 8)}, foreign)
    extra = [e.format(lora=models["lora"], tmp=tmp_path, foreign=foreign) for e in extra]
    assert hv_generate_video.main(generate_argv(models, tmp_path / "out", "--seed", "1", *extra)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()
