"""The options of the commands other than training: declared once as frozen dataclasses, parsed into them, the
same flags, required flags and messages as ever; derived values are computed, never written back."""

from __future__ import annotations

import dataclasses

import pytest

import cache_latents
import cache_text_encoder_outputs
import convert_lora
import hv_generate_video
import merge_lora
from caching.options import parse_latent_cache, parse_text_cache
from generation.options import parse_generate

# the VAE last: the test without one drops it
NAMED = {"--dit": "d", "--text_encoder1": "t1", "--text_encoder2": "t2", "--prompt": "p", "--save_path": "o"}
GENERATE = [*(part for flag_value in NAMED.items() for part in flag_value), "--vae", "v"]

REQUIRED = {
    cache_latents: "--dataset_config",
    cache_text_encoder_outputs: "--dataset_config, --text_encoder1, --text_encoder2",
    hv_generate_video: "--dit, --text_encoder1, --text_encoder2, --prompt, --save_path",
    convert_lora: "--input, --output, --target",
    merge_lora: "--dit, --save_merged_model",  # --lora_weight optional, as in musubi-tuner
}


@pytest.mark.parametrize("command", list(REQUIRED), ids=lambda m: m.__name__)
def test_missing_required_flags_are_one_line(command, capsys):
    with pytest.raises(SystemExit) as info:
        command.main([])
    assert info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: the following arguments are required: {REQUIRED[command]} (see --help)\n"
    )


def test_generation_options_are_typed_frozen_and_keep_their_defaults():
    config = parse_generate(GENERATE)
    assert config.sampling.video_size == (256, 256) and config.sampling.video_length == 129
    assert (
        config.sampling.seed is None and config.lora.lora_weight == () and config.compute.blocks_to_swap == 0
    )
    assert config.encoders.text_encoder1 == "t1" and config.encoders.tokenizer1 is None
    assert config.compute.attention_backend == "sdpa" and config.output.output_type == "video"
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sampling.negative_prompt = ""  # type: ignore[misc]


def test_true_cfg_samples_against_the_empty_prompt_unless_given():
    assert parse_generate(GENERATE).sampling.negative_text is None  # no CFG: no negative pass
    cfg = parse_generate([*GENERATE, "--guidance_scale", "4"]).sampling
    assert cfg.negative_text == "" and cfg.negative_prompt is None  # derived, not written back
    given = parse_generate([*GENERATE, "--guidance_scale", "4", "--negative_prompt", "blur"]).sampling
    assert given.negative_text == "blur"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--lora_multiplier", "0.5"], "--lora_multiplier without --lora_weight"),
        (["--lora_weight", "a", "b", "--lora_multiplier", "1"], "1 values for 2 --lora_weight files"),
        (["--fp8_scaled", "--lora_merge", "--lora_weight", "a"], "--lora_merge needs a DiT in --dit_dtype"),
        (
            ["--attn_mode", "sdpa", "--split_attn", "--blocks_to_swap", "-2"],
            "--blocks_to_swap -2: expected 0",
        ),
    ],
)
def test_generation_checks_combinations_as_the_options_are_built(extra, expected):
    from hv_common.errors import UserError

    with pytest.raises(UserError, match=expected):
        parse_generate([*GENERATE, *extra])


def test_video_output_without_a_vae_is_refused():
    from hv_common.errors import UserError

    without_vae = GENERATE[:-2]
    assert parse_generate([*without_vae, "--output_type", "latent"]).files.vae is None
    with pytest.raises(UserError, match="--output_type video needs --vae"):
        parse_generate(without_vae)


def test_caching_options_share_the_dataset_and_encoder_groups():
    latents = parse_latent_cache(["--dataset_config", "d.toml", "--vae", "v", "--skip_existing"])
    text = parse_text_cache(["--dataset_config", "d.toml", "--text_encoder1", "a", "--text_encoder2", "b"])
    assert type(latents.dataset) is type(text.dataset)
    assert latents.dataset.skip_existing and not text.dataset.skip_existing
    assert (latents.vae.batch_size, text.encoding.batch_size) == (1, 16)
    assert (latents.vae.seed, latents.vae.vae_spatial_tile_sample_min_size) == (0, None)  # as musubi-tuner
    assert text.encoders.text_encoder2 == "b"
