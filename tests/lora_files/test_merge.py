"""lora_files/merge.py and merge_lora.py: merging sums the LoRAs' updates, streams every DiT layout to one result,
and a LoRA that does not fit or a bad argument is one line, nothing written."""

from __future__ import annotations

import pytest
import torch
from lora_file_testing import deltas as _deltas
from lora_file_testing import foreign_lora
from lora_file_testing import one_error_line as _one_error_line
from lora_file_testing import trained_network as _trained
from safetensors.torch import load_file, save_file

import merge_lora
from hunyuan_model.checkpoint import load_dit, read_state_dict, to_original_layout
from hunyuan_model.diffusers_layout import original_to_diffusers
from hunyuan_model.lazy_checkpoint import LazyDiT
from lora_files.io import save_network
from lora_files.merge import parse_options


def test_merging_two_loras_sums_their_updates_and_keeps_other_tensors(tiny_files, tmp_path):
    dit, lora = tiny_files
    second = tmp_path / "second.safetensors"
    save_network(_trained(load_dit(dit), "exclude_patterns=[r'.*single_blocks.*']", seed=9), str(second))
    out = tmp_path / "merged.safetensors"
    argv = [
        "--dit",
        str(dit),
        "--lora_weight",
        str(lora),
        str(second),
        "--lora_multiplier",
        "0.5",
        "-1.5",
        "--save_merged_model",
        str(out),
        "--save_dtype",
        "bf16",
    ]
    assert merge_lora.main(argv) == 0
    base, merged = read_state_dict(dit), read_state_dict(out)
    assert base.keys() == merged.keys() and all(v.dtype == torch.bfloat16 for v in merged.values())
    first, other = _deltas(lora), _deltas(second)
    for key, value in base.items():
        name = key.removesuffix(".weight")
        expected = (
            value + 0.5 * first.get(name, 0) - 1.5 * other.get(name, 0) if key.endswith(".weight") else value
        )
        assert torch.allclose(merged[key].float(), expected.to(torch.bfloat16).float(), atol=1e-2, rtol=0), (
            key
        )
    assert not torch.equal(
        merged["double_blocks.0.img_attn_qkv.weight"].float(),
        base["double_blocks.0.img_attn_qkv.weight"].to(torch.bfloat16).float(),
    )


def test_merge_streams_every_dit_layout_to_the_same_result(tiny_files, tmp_path):
    dit, lora = tiny_files
    diffusers_dit, official = tmp_path / "diffusers_dit.safetensors", tmp_path / "mp_rank_00_model_states.pt"
    theirs = original_to_diffusers(read_state_dict(dit))
    save_file({k: v.contiguous() for k, v in theirs.items()}, diffusers_dit)
    torch.save({"module": read_state_dict(dit)}, official)  # the official .pt form, read memory-mapped
    with LazyDiT(diffusers_dit) as lazy:
        eager = to_original_layout(read_state_dict(diffusers_dit))
        assert sorted(lazy.keys()) == sorted(eager)
        assert all(torch.equal(lazy.get(k), eager[k]) for k in eager)
        assert all(lazy.meta(k).shape == eager[k].shape for k in eager)
    outs = []
    for source in (dit, diffusers_dit, official):
        outs.append(tmp_path / f"merged_{source.stem}.safetensors")
        argv = ["--dit", str(source), "--lora_weight", str(lora), "--save_merged_model", str(outs[-1])]
        assert merge_lora.main(argv) == 0
    first = load_file(outs[0])
    for other in outs[1:]:
        merged = load_file(other)
        assert first.keys() == merged.keys() and all(torch.equal(first[k], merged[k]) for k in first)


def _foreign_lora(path) -> None:
    """foreign_lora (tests/helpers/lora_file_testing.py) under the name the test ids below carry."""
    foreign_lora(path)


def _other_size_lora(path) -> None:
    """Our layout and names, but a 720p-wide module: the tiny DiT is 64 wide."""
    save_file(
        {
            "lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(4, 3072),
            "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.zeros(3072, 4),
        },
        path,
    )


def _other_blocks_lora(path) -> None:
    """Block 7 of a model the tiny DiT (2 double blocks) does not have."""
    save_file(
        {
            "lora_unet_double_blocks_7_img_attn_proj.lora_down.weight": torch.zeros(4, 64),
            "lora_unet_double_blocks_7_img_attn_proj.lora_up.weight": torch.zeros(64, 4),
        },
        path,
    )


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (_foreign_lora, "unknown LoRA layout"),
        (_other_size_lora, "3072 x 3072 in the LoRA but 64 x 64"),
        (_other_blocks_lora, "double_blocks.7.img_attn_proj is not a Linear of the DiT"),
    ],
)
def test_merge_rejects_loras_that_do_not_fit(tiny_files, tmp_path, capsys, make, expected):
    dit, lora = tiny_files
    bad, out = tmp_path / "bad.safetensors", tmp_path / "merged.safetensors"
    make(bad)
    argv = ["--dit", str(dit), "--lora_weight", str(lora), str(bad), "--save_merged_model", str(out)]
    assert merge_lora.main(argv) == 2
    assert expected in _one_error_line(capsys)
    assert not out.exists() and not list(tmp_path.glob(".merged*"))


def test_merge_rejects_bad_arguments(tiny_files, tmp_path, capsys):
    dit, lora = tiny_files
    out = tmp_path / "merged.safetensors"
    base = ["--dit", str(dit), "--save_merged_model", str(out)]
    assert merge_lora.main([*base, "--lora_weight", str(lora), "--lora_multiplier", "1", "2"]) == 2
    assert "2 values for 1 --lora_weight" in _one_error_line(capsys)
    assert merge_lora.main([*base, "--lora_weight", str(tmp_path / "missing.safetensors")]) == 2
    assert "LoRA file not found" in _one_error_line(capsys)
    argv = [
        "--dit",
        str(tmp_path / "no_dit.safetensors"),
        "--lora_weight",
        str(lora),
        "--save_merged_model",
        str(out),
    ]
    assert merge_lora.main(argv) == 2
    assert "DiT checkpoint not found" in _one_error_line(capsys)
    assert (
        merge_lora.main(["--dit", str(lora), "--lora_weight", str(lora), "--save_merged_model", str(out)])
        == 2
    )
    assert "not a HunyuanVideo DiT" in _one_error_line(capsys)
    assert not out.exists()


def test_musubi_tuners_merge_options_keep_their_meaning(tiny_dit, tmp_path, capsys):
    from lycoris_files import loha_update, lokr_update, write_loha, write_lokr

    loha, lokr, out = tmp_path / "loha.safetensors", tmp_path / "lokr.safetensors", tmp_path / "m.safetensors"
    updates = {m: 0.5 * loha_update(k) for m, k in write_loha(loha, tiny_dit).items()}
    for m, keys in write_lokr(lokr, tiny_dit).items():
        updates[m] = updates[m] + lokr_update(keys)  # no multiplier of its own: 1.0, as in musubi-tuner
    base = ["--dit", str(tiny_dit), "--save_merged_model", str(out)]
    argv = [
        *base,
        "--lora_weight",
        str(loha),
        str(lokr),
        "--lora_multiplier",
        "0.5",
        "--dit_in_channels",
        "16",
    ]
    assert merge_lora.main(argv) == 0
    merged, dit = load_file(out), load_file(tiny_dit)
    for key, value in dit.items():
        want = (
            value + updates[key.removesuffix(".weight")] if key.removesuffix(".weight") in updates else value
        )
        torch.testing.assert_close(merged[key], want, rtol=1e-5, atol=1e-5)
    # no --lora_weight: the DiT rewritten as it is
    assert merge_lora.main(base) == 0
    assert all(torch.equal(load_file(out)[k], v) for k, v in dit.items())
    # --dit_in_channels is checked against the DiT's img_in
    assert merge_lora.main([*base, "--dit_in_channels", "32"]) == 2
    line = _one_error_line(capsys)
    assert "--dit_in_channels 32: --dit" in line and "16 input channels" in line
    assert parse_options(base).device is None  # musubi-tuner's default: cuda when there is one
