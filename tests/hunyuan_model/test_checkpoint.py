"""Every DiT layout users have loads to the same weights; everything else is one line and exit 2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hunyuan_model.checkpoint import load_dit, read_dit_config
from hunyuan_model.config import get_preset
from hunyuan_model.diffusers_layout import original_to_diffusers
from hunyuan_model.errors import CheckpointError
from hunyuan_model.inspect import main as inspect_main
from hunyuan_model.tiny import DIT_FILENAME, tiny_dit_state_dict, write_tiny_dit


@pytest.fixture(scope="module")
def tiny_sd() -> dict[str, torch.Tensor]:
    return tiny_dit_state_dict(seed=3)


def _write_sharded_diffusers(folder: Path, sd: dict[str, torch.Tensor]) -> None:
    folder.mkdir()
    keys = sorted(sd)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    weight_map = {}
    for name, names in shards.items():
        save_file({k: sd[k].contiguous() for k in names}, str(folder / name))
        weight_map.update(dict.fromkeys(names, name))
    index = {"metadata": {}, "weight_map": weight_map}
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))


def _layouts(tmp_path: Path, sd: dict[str, torch.Tensor]) -> dict[str, Path]:
    paths = {}
    paths["safetensors"] = tmp_path / "dit.safetensors"
    save_file(sd, str(paths["safetensors"]))
    paths["comfyui"] = tmp_path / "comfy.safetensors"
    save_file({f"model.diffusion_model.{k}": v for k, v in sd.items()}, str(paths["comfyui"]))
    paths["pt_module"] = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": sd}, paths["pt_module"])
    paths["pt_plain"] = tmp_path / "plain.pt"
    torch.save(sd, paths["pt_plain"])
    paths["pt_legacy"] = tmp_path / "legacy.pt"  # old serialisation: cannot be memory-mapped
    torch.save({"module": sd}, paths["pt_legacy"], _use_new_zipfile_serialization=False)
    diffusers_sd = {k: v.contiguous() for k, v in original_to_diffusers(sd).items()}
    paths["diffusers_file"] = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file(diffusers_sd, str(paths["diffusers_file"]))
    paths["diffusers_sharded"] = tmp_path / "transformer"
    _write_sharded_diffusers(paths["diffusers_sharded"], diffusers_sd)
    return paths


def test_every_layout_loads_the_same_weights(tmp_path, tiny_sd):
    for layout, path in _layouts(tmp_path, tiny_sd).items():
        assert read_dit_config(path) == get_preset("tiny"), layout
        model = load_dit(path)
        loaded = model.state_dict()
        assert loaded.keys() == tiny_sd.keys(), layout
        for key, value in tiny_sd.items():
            assert torch.equal(loaded[key], value), (layout, key)
        assert not any(p.is_meta for p in model.parameters()), layout


def test_dtype_is_chosen_at_load(tmp_path, tiny_sd):
    path = tmp_path / "dit.safetensors"
    save_file(tiny_sd, str(path))
    model = load_dit(path, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_config_is_derived_from_shapes_not_presets(tmp_path):
    from hunyuan_model.config import DiTConfig, rope_dims_for
    from hunyuan_model.model import build_dit

    odd = DiTConfig(
        hidden_size=96,
        heads_num=2,
        mm_double_blocks_depth=1,
        mm_single_blocks_depth=3,
        rope_dim_list=rope_dims_for(48),
        text_states_dim=40,
        text_states_dim_2=12,
        refiner_depth=1,
        guidance_embed=False,
    )
    sd = {k: v.contiguous() for k, v in build_dit(odd, device="cpu").state_dict().items()}
    path = tmp_path / "odd.safetensors"
    save_file(sd, str(path))
    derived = read_dit_config(path)
    assert derived == odd
    diffusers_path = tmp_path / "odd_diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in original_to_diffusers(sd).items()}, str(diffusers_path))
    assert read_dit_config(diffusers_path) == odd


def test_tiny_writer_is_deterministic(tmp_path):
    a = write_tiny_dit(tmp_path / "a")
    b = write_tiny_dit(tmp_path / "b")
    assert a.name == DIT_FILENAME
    assert a.read_bytes() == b.read_bytes()
    assert write_tiny_dit(tmp_path / "c", seed=1).read_bytes() != a.read_bytes()
    assert not [p for p in (tmp_path / "a").iterdir() if p.name != DIT_FILENAME]  # no temp file left


# ---------------------------------------------------------------- bad input


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


def _bad_files(tmp_path: Path, tiny_sd) -> dict[str, tuple[Path, str]]:
    """name -> (file, a fragment the one-line message must contain)"""
    bad = {}
    other = tmp_path / "vae.safetensors"
    save_file(
        {"encoder.conv_in.weight": torch.zeros(4, 3, 3, 3), "decoder.conv_out.bias": torch.zeros(3)},
        str(other),
    )
    bad["other_model"] = (other, "not a HunyuanVideo DiT: 2 keys, first 'decoder.conv_out.bias'")
    good = tmp_path / "good.safetensors"
    save_file(tiny_sd, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    bad["truncated"] = (truncated, "not a readable safetensors file")
    text = tmp_path / "notes.safetensors"
    text.write_text("these are my training notes\n" * 20)
    bad["text_file"] = (text, "not a readable safetensors file")
    garbage_pt = tmp_path / "garbage.pt"
    garbage_pt.write_bytes(os.urandom(4096))
    bad["garbage_pt"] = (garbage_pt, "not a readable PyTorch checkpoint")
    truncated_pt = tmp_path / "truncated.pt"
    torch.save(tiny_sd, truncated_pt)
    truncated_pt.write_bytes(truncated_pt.read_bytes()[:20000])
    bad["truncated_pt"] = (truncated_pt, "not a readable PyTorch checkpoint")
    _Payload.marker = tmp_path / "pwned"
    payload = tmp_path / "payload.pt"
    torch.save({"module": _Payload()}, payload)
    bad["pickle_payload"] = (payload, "refusing to load")
    not_tensors = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_tensors)
    bad["not_a_state_dict"] = (not_tensors, "not a state dict of tensors")
    partial = tmp_path / "partial.safetensors"
    save_file({k: v for k, v in tiny_sd.items() if "single_blocks.1.linear2" not in k}, str(partial))
    bad["missing_keys"] = (
        partial,
        "2 missing keys ('single_blocks.1.linear2.bias', 'single_blocks.1.linear2.weight')",
    )
    extra = tmp_path / "extra.safetensors"
    save_file({**tiny_sd, "lora_unet_foo.alpha": torch.tensor(1.0)}, str(extra))
    bad["unexpected_keys"] = (extra, "1 unexpected keys ('lora_unet_foo.alpha')")
    shaped = tmp_path / "shaped.safetensors"
    save_file({**tiny_sd, "final_layer.linear.bias": torch.zeros(7)}, str(shaped))
    bad["wrong_shape"] = (shaped, "'final_layer.linear.bias': (7,) where (64,) is expected")
    bad["missing_file"] = (tmp_path / "nope.safetensors", "DiT checkpoint not found")
    bad["empty_folder"] = (tmp_path / "empty_dir", "folder holds no .safetensors file")
    (tmp_path / "empty_dir").mkdir()
    return bad


def test_bad_files_raise_one_line_errors(tmp_path, tiny_sd):
    for name, (path, fragment) in _bad_files(tmp_path, tiny_sd).items():
        with pytest.raises(CheckpointError) as info:
            load_dit(path)
        message = str(info.value)
        assert fragment in message, (name, message)
        assert "\n" not in message and len(message) < 400, name
    assert not _Payload.marker.exists(), "the pickle payload ran"


def test_bad_files_exit_2_through_the_command(tmp_path, tiny_sd, capsys):
    bad = _bad_files(tmp_path, tiny_sd)
    for name, (path, fragment) in bad.items():
        assert inspect_main([str(path)]) == 2, name
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert out == "" and len(lines) == 1, (name, err)
        assert lines[0].startswith("error: ") and fragment in lines[0], (name, err)
    # The real process: exit status 2, one line, no traceback (a few cases; each costs a torch import).
    for name in ("other_model", "truncated", "pickle_payload"):
        path, fragment = bad[name]
        proc = subprocess.run(
            [sys.executable, "-m", "hunyuan_model.inspect", str(path)], capture_output=True, text=True
        )
        assert proc.returncode == 2, (name, proc.stderr)
        assert proc.stdout == "" and proc.stderr.count("\n") == 1 and fragment in proc.stderr, name
    assert not _Payload.marker.exists()


def test_inspect_describes_each_layout(tmp_path, tiny_sd, capsys):
    for layout, path in _layouts(tmp_path, tiny_sd).items():
        assert inspect_main([str(path), "--json"]) == 0, layout
        info = json.loads(capsys.readouterr().out)
        assert info["preset"] == "tiny"
        assert info["layout"] == ("diffusers" if layout.startswith("diffusers") else "original")
        assert info["parameters"] == sum(v.numel() for v in tiny_sd.values())
