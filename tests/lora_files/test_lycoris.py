"""lora_files/lycoris.py: LoHa and LoKr files (musubi-tuner's / LyCORIS's layout) merged, applied on the fly and
converted with the updates the plain formulas give; what cannot be read is one line."""

from __future__ import annotations

import pytest
import torch
from lora_file_testing import one_error_line
from lycoris_files import linears, loha_update, lokr_update, save, write_loha, write_lokr
from safetensors.torch import load_file, save_file

import convert_lora
import merge_lora
from hunyuan_model.checkpoint import load_dit, read_state_dict
from lora_files.apply import apply_on_the_fly, merge_into, restore_all
from lora_files.io import load_lora


def _merge(dit, lora, out, multiplier: str) -> dict[str, torch.Tensor]:
    argv = ["--dit", str(dit), "--lora_weight", str(lora), "--lora_multiplier", multiplier]
    assert merge_lora.main([*argv, "--save_merged_model", str(out)]) == 0
    return read_state_dict(out)


def _assert_merged(base, merged, expected_updates, multiplier: float) -> None:
    assert base.keys() == merged.keys()
    for key, value in base.items():
        name = key.removesuffix(".weight")
        want = value + multiplier * expected_updates[name] if name in expected_updates else value
        torch.testing.assert_close(merged[key], want, rtol=1e-5, atol=1e-5, msg=key)


def test_merged_loha_is_base_plus_the_hadamard_product(tiny_dit, tmp_path):
    factors = write_loha(tmp_path / "loha.safetensors", tiny_dit, rank=4, alpha=2.0)
    merged = _merge(tiny_dit, tmp_path / "loha.safetensors", tmp_path / "merged.safetensors", "0.7")
    updates = {m: loha_update(keys) for m, keys in factors.items()}
    assert len(updates) == len(linears(tiny_dit)) and all(u.abs().max() > 0 for u in updates.values())
    _assert_merged(read_state_dict(tiny_dit), merged, updates, 0.7)


@pytest.mark.parametrize("mode", ["low", "full", "both"])
def test_merged_lokr_is_base_plus_the_kronecker_product(tiny_dit, tmp_path, mode):
    factors = write_lokr(tmp_path / "lokr.safetensors", tiny_dit, mode=mode, rank=2, alpha=3.0)
    merged = _merge(tiny_dit, tmp_path / "lokr.safetensors", tmp_path / "merged.safetensors", "-0.5")
    updates = {m: lokr_update(keys) for m, keys in factors.items()}
    _assert_merged(read_state_dict(tiny_dit), merged, updates, -0.5)
    f = load_lora(tmp_path / "lokr.safetensors").weights["double_blocks.0.img_attn_qkv"]
    # the full-matrix case ignores alpha (3.0): scale 1; else alpha / rank = 1.5
    assert (f.kind, f.scale) == ("LoKr", 1.0 if mode == "full" else 1.5)


def test_applied_on_the_fly_equals_merged_and_restores(tiny_dit, tmp_path):
    loha, lokr = tmp_path / "loha.safetensors", tmp_path / "lokr.safetensors"
    write_loha(loha, tiny_dit)
    write_lokr(lokr, tiny_dit)
    loras = [(load_lora(loha), 0.6), (load_lora(lokr), -0.4)]
    model = load_dit(tiny_dit)
    merged = load_dit(tiny_dit)
    merge_into(merged, loras)
    linear = "single_blocks.0.linear1"
    x = torch.randn(3, model.get_submodule(linear).in_features)
    base = model.get_submodule(linear)(x)
    applied = apply_on_the_fly(model, loras)
    assert len(applied) == 2 * len(linears(tiny_dit))
    on_the_fly = model.get_submodule(linear)(x)
    torch.testing.assert_close(on_the_fly, merged.get_submodule(linear)(x), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(on_the_fly, base)
    restore_all(applied)
    torch.testing.assert_close(model.get_submodule(linear)(x), base)


@pytest.mark.parametrize("kind", ["loha", "lokr"])
def test_convert_round_trip_keeps_every_key(tiny_dit, tmp_path, kind):
    src, other, back = (tmp_path / f"{n}.safetensors" for n in ("src", "other", "back"))
    (write_loha if kind == "loha" else write_lokr)(src, tiny_dit)
    assert convert_lora.main(["--input", str(src), "--output", str(other), "--target", "other"]) == 0
    comfy = load_file(other)
    first = "hada_w1_a" if kind == "loha" else "lokr_w1"
    for module in linears(tiny_dit):  # ComfyUI's keys: diffusion_model.<module>.<key>, alpha included
        assert f"diffusion_model.{module}.{first}" in comfy and f"diffusion_model.{module}.alpha" in comfy
    assert convert_lora.main(["--input", str(other), "--output", str(back), "--target", "default"]) == 0
    original, again = load_file(src), load_file(back)
    assert original.keys() == again.keys()
    for key in original:
        torch.testing.assert_close(again[key], original[key], msg=key)


def test_diffusers_prefix_names_the_written_keys(tiny_dit, tiny_files, tmp_path):
    _, lora = tiny_files
    loha, out = tmp_path / "loha.safetensors", tmp_path / "out.safetensors"
    write_loha(loha, tiny_dit)
    argv = ["--output", str(out), "--target", "other", "--diffusers_prefix", "transformer"]
    assert convert_lora.main(["--input", str(loha), *argv]) == 0
    assert all(
        k.startswith("transformer.single_blocks.") or k.startswith("transformer.double_blocks.")
        for k in load_file(out)
    )
    before, after = load_lora(loha).weights, load_lora(out).weights  # transformer.<module> reads back
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name].delta(), before[name].delta())
    for target in ("other", "diffusers"):
        argv = [
            "--input",
            str(lora),
            "--output",
            str(out),
            "--target",
            target,
            "--diffusers_prefix",
            "my_model",
        ]
        assert convert_lora.main(argv) == 0
        keys = load_file(out)
        assert keys and all(
            k.startswith("my_model.") and k.endswith(("lora_A.weight", "lora_B.weight")) for k in keys
        )


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--target", "default", "--diffusers_prefix", "transformer"], "--target default writes lora_unet_"),
        (["--target", "other", "--diffusers_prefix", ""], "expected a key prefix"),
        (["--target", "other", "--diffusers_prefix", "diffusion_model."], "expected a key prefix"),
    ],
)
def test_diffusers_prefix_misuse_is_one_line(tmp_path, capsys, argv, fragment):
    out = tmp_path / "out.safetensors"
    with pytest.raises(SystemExit) as stop:  # argparse's error exits; the dataclass's check returns 2
        raise SystemExit(
            convert_lora.main(["--input", str(tmp_path / "in.safetensors"), "--output", str(out), *argv])
        )
    assert stop.value.code == 2
    assert fragment in one_error_line(capsys)
    assert not out.exists()


def test_lokr_to_diffusers_is_refused_in_one_line(tiny_dit, tmp_path, capsys):
    lokr, out = tmp_path / "lokr.safetensors", tmp_path / "out.safetensors"
    write_lokr(lokr, tiny_dit)
    assert convert_lora.main(["--input", str(lokr), "--output", str(out), "--target", "diffusers"]) == 2
    line = one_error_line(capsys)
    assert "is a LoKr module" in line and "--target other" in line
    assert not out.exists()


def _with(factors, module: str, **extra: torch.Tensor):
    factors = {m: dict(keys) for m, keys in factors.items()}
    factors[module].update(extra)
    return factors


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda f, m: _with(f, m, hada_t1=torch.ones(2, 2, 1, 1)), "a Tucker LoHa"),
        (lambda f, m: _with(f, m, dora_scale=torch.ones(1, 64)), "weight-decomposed (DoRA)"),
        (lambda f, m: {m: {"oft_blocks": torch.ones(4, 16, 16)}}, "an OFT module"),
        (lambda f, m: _with(f, m, **{"lora_down.weight": torch.ones(4, 64)}), "mixes LoHa and LoRA keys"),
        (lambda f, m: {m: {k: v for k, v in f[m].items() if k != "hada_w2_b"}}, "has no hada_w2_b"),
        (lambda f, m: _with(f, m, hada_w2_a=torch.ones(5, 4)), "do not make two products of one shape"),
    ],
)
def test_what_cannot_be_read_is_one_line(tiny_dit, tmp_path, capsys, change, fragment):
    src, bad, out = (
        tmp_path / "loha.safetensors",
        tmp_path / "bad.safetensors",
        tmp_path / "merged.safetensors",
    )
    factors = write_loha(src, tiny_dit)
    module = "double_blocks.0.img_attn_proj"
    save(bad, change(factors, module))
    argv = ["--dit", str(tiny_dit), "--lora_weight", str(bad), "--save_merged_model", str(out)]
    assert merge_lora.main(argv) == 2
    line = one_error_line(capsys)
    assert fragment in line and ("double_blocks.0.img_attn_proj" in line or "Tucker" in line), line
    assert not out.exists()


def test_lycoris_in_diffusers_names_is_refused(tmp_path, capsys):
    src = tmp_path / "lokr_diffusers.safetensors"
    save(
        src,
        {"transformer_blocks.0.attn.to_q": {"lokr_w1": torch.ones(8, 8), "lokr_w2": torch.ones(8, 8)}},
        "transformer",
    )
    out = tmp_path / "out.safetensors"
    assert convert_lora.main(["--input", str(src), "--output", str(out), "--target", "default"]) == 2
    assert "LyCORIS module in diffusers' module names" in one_error_line(capsys)


@pytest.mark.parametrize(
    ("algo", "dim", "kwargs"),
    [
        ("loha", 2, {}),
        ("lokr", 2, {}),  # lokr_w1 full, lokr_w2_a @ lokr_w2_b
        ("lokr", 8, {}),  # too large a rank for 64 = 8 x 8: both full, alpha ignored
        ("lokr", 2, {"decompose_both": True, "factor": 8}),  # lokr_w1_a @ lokr_w1_b too
    ],
)
def test_files_of_the_lycoris_package_merge_to_what_its_own_modules_compute(tmp_path, algo, dim, kwargs):
    """A network of the LyCORIS package itself (`lycoris.kohya`, as musubi-tuner's --network_module
    lycoris.kohya trains it) on the tiny DiT, saved, merged by us: each Linear gives what LyCORIS's forward gives."""
    kohya = pytest.importorskip("lycoris.kohya", reason="the LyCORIS package (pip install lycoris-lora)")
    from lora_testing import tiny_model

    adapted = tiny_model()
    network = kohya.create_network(
        1.0, dim, 3.0, None, None, adapted, algo=algo, warn_on_unmatched=False, **kwargs
    )
    network.apply_to(None, adapted, apply_text_encoder=False, apply_unet=True)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in network.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    path = tmp_path / f"{algo}.safetensors"
    # img_in.proj is a Conv3d, which LyCORIS adapts too: not a Linear (merge_lora.py names it in one line)
    save_file({k: v.contiguous() for k, v in network.state_dict().items() if "img_in" not in k}, str(path))
    lora = load_lora(path)
    assert {f.kind for f in lora.weights.values()} == {"LoHa" if algo == "loha" else "LoKr"}
    merged, base = tiny_model(), tiny_model()
    merge_into(merged, [(lora, 1.0)])
    for name in ("double_blocks.0.img_attn_qkv", "double_blocks.1.txt_mlp.fc1", "single_blocks.0.linear1"):
        x = torch.randn(3, base.get_submodule(name).in_features, generator=g)
        theirs, ours = adapted.get_submodule(name)(x), merged.get_submodule(name)(x)
        assert not torch.allclose(theirs, base.get_submodule(name)(x))
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5, msg=name)


def test_generation_applies_loha_and_lokr_on_the_fly_as_merged(tmp_path):
    """hv_generate_video.py with a LoHa and a LoKr file: on the fly gives the merged result, and not the base."""
    import hv_generate_video
    from hunyuan_model.tiny import write_tiny_dit
    from hunyuan_model.tiny_encoders import write_tiny_clip, write_tiny_llm, write_tiny_vae

    dit = write_tiny_dit(tmp_path / "dit")
    vae, te1, te2 = (
        write_tiny_vae(tmp_path / "vae"),
        write_tiny_llm(tmp_path / "te1"),
        write_tiny_clip(tmp_path / "te2"),
    )
    loha, lokr = tmp_path / "loha.safetensors", tmp_path / "lokr.safetensors"
    write_loha(loha, dit, alpha=0.5)
    write_lokr(lokr, dit, alpha=0.5)
    common = [
        *("--dit", str(dit), "--vae", str(vae), "--text_encoder1", str(te1), "--text_encoder2", str(te2)),
        *("--prompt", "a red ball", "--video_size", "32", "32", "--video_length", "1", "--infer_steps", "2"),
        *("--seed", "3", "--output_type", "latent", "--save_path", str(tmp_path / "out")),
    ]
    loras = ["--lora_weight", str(loha), str(lokr), "--lora_multiplier", "0.5", "0.3"]
    runs = {"fly": loras, "merged": [*loras, "--lora_merge"], "base": []}
    for name, extra in runs.items():
        assert hv_generate_video.main([*common, *extra, "--output_name", name]) == 0
    latent = {name: load_file(tmp_path / "out" / f"{name}_latent.safetensors")["latent"] for name in runs}
    torch.testing.assert_close(latent["fly"], latent["merged"], rtol=1e-3, atol=1e-4)
    assert not torch.allclose(latent["fly"], latent["base"], atol=1e-3)
