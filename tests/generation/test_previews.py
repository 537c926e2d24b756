"""PreviewSampler with the tiny models: files written, encoders freed, training RNG and modes untouched."""

import weakref
from pathlib import Path

import pytest
import torch
from torch import nn

from generation.previews import PreviewSampler
from generation.prompts import PromptDefaults
from hv_common.errors import UserError
from hv_common.labels import epoch_label, step_label
from hv_common.video_io import read_frames


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from hunyuan_model.tiny import write_tiny_dit
    from hunyuan_model.tiny_encoders import write_tiny_clip, write_tiny_llm, write_tiny_vae

    out = tmp_path_factory.mktemp("tiny")
    write_tiny_dit(out)
    write_tiny_vae(out / "vae")
    write_tiny_llm(out / "text_encoder")
    write_tiny_clip(out / "text_encoder_2")
    return out


@pytest.fixture(scope="module")
def models(tiny):
    from hunyuan_model.checkpoint import load_dit
    from hunyuan_model.vae import load_vae

    return load_dit(tiny / "tiny_dit.safetensors", torch.float32), load_vae(tiny / "vae")


class DropoutLikeWrapper(nn.Module):
    """Draws from the global RNG in every forward, as LoRA dropout does; records the mode it ran in."""

    def __init__(self, dit: nn.Module) -> None:
        super().__init__()
        self.dit = dit
        self.modes: list[bool] = []

    def forward(self, *args, **kwargs):
        self.modes.append(self.training)
        torch.rand(16)
        return self.dit(*args, **kwargs)


PROMPTS = (
    "# previews\n"
    "a red ball rolls --f 5 --d 3\n"
    "a cat walks --f 1 --w 32 --l 3.0\n"
    "a red ball rolls --f 1 --s 2 --d 4 --n blurry --l 2.0\n"
)


def build(tiny: Path, tmp_path: Path, **kwargs) -> PreviewSampler:
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS, encoding="utf-8")
    defaults = PromptDefaults(width=64, height=48, frames=5, steps=3)
    return PreviewSampler.from_files(
        path, tiny / "text_encoder", tiny / "text_encoder_2", output_name="demo", defaults=defaults, **kwargs
    )


def test_encodes_each_text_once_and_frees_the_encoders(tiny, tmp_path, monkeypatch):
    import hunyuan_model.text_encoders as te

    instances, encoded = [], []

    class Tracking(te.HunyuanTextEncoders):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            instances.append(weakref.ref(self))

        def encode(self, prompts):
            encoded.extend(prompts)
            return super().encode(prompts)

    monkeypatch.setattr(te, "HunyuanTextEncoders", Tracking)
    sampler = build(tiny, tmp_path)
    assert len(instances) == 1 and instances[0]() is None  # nothing keeps the 8 B LLM alive
    # "a red ball rolls" twice, "" for the CFG prompt without --n, "blurry": four distinct texts
    assert sorted(encoded) == sorted(["a red ball rolls", "a cat walks", "", "blurry"])
    first, cat, ball = sampler.prepared
    assert first.negative is None and cat.negative is not None and ball.negative is not None
    assert first.embeddings.llm.device.type == "cpu" and first.embeddings.llm.shape[0] == 1
    assert torch.equal(first.embeddings.llm, ball.embeddings.llm)
    assert not torch.equal(cat.negative.llm, ball.negative.llm)  # "" vs "blurry"


def test_sample_writes_previews_and_leaves_rng_and_modes_as_they_were(tiny, models, tmp_path):
    dit, vae = models
    sampler = build(tiny, tmp_path)
    model = DropoutLikeWrapper(dit)
    network = nn.Linear(2, 2)  # stands for a LoRA network that is not a submodule of the DiT
    model.train()
    dit.final_layer.eval()  # a submodule with its own mode keeps it
    torch.manual_seed(123)
    torch.rand(3)
    state = torch.random.get_rng_state()

    written = sampler.sample(
        model, vae, step_label(100), tmp_path / "out", "cpu", torch.float32, network=network
    )

    names = [p.name for p in written]
    assert names == [
        "demo_step00000100_00_3.mp4",
        "demo_step00000100_01_42.png",
        "demo_step00000100_02_4.png",
    ]
    assert all(p.parent == tmp_path / "out" / "sample" for p in written)
    assert read_frames(written[0]).shape == (5, 48, 64, 3)
    assert read_frames(written[1]).shape == (1, 48, 32, 3)
    assert model.modes and not any(model.modes)  # sampled in eval mode
    assert len(model.modes) == 3 + 3 + 2  # steps per prompt; CFG batches its two evaluations
    assert torch.equal(torch.random.get_rng_state(), state)
    assert model.training and dit.training and network.training and not dit.final_layer.training
    assert not vae.training  # the VAE was in eval before and stays so
    dit.final_layer.train()


def test_same_label_same_pictures_and_epoch_labels(tiny, models, tmp_path):
    dit, vae = models
    sampler = build(tiny, tmp_path)
    sampler.prepared = sampler.prepared[1:2]  # one PNG is enough
    first = sampler.sample(dit, vae, epoch_label(2), tmp_path / "a", "cpu", torch.float32, progress=False)
    again = sampler.sample(dit, vae, epoch_label(2), tmp_path / "b", "cpu", torch.float32, progress=False)
    assert first[0].name == "demo_000002_01_42.png"
    assert (read_frames(first[0]) == read_frames(again[0])).all()
    assert read_frames(first[0]).std() > 0  # a picture, not a flat fill


def test_a_bad_prompts_file_fails_before_any_encoder_loads(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a cat --q 3\n", encoding="utf-8")
    with pytest.raises(UserError, match="prompts.txt:1: unknown option --q"):
        PreviewSampler.from_files(path, tmp_path / "no_llm", tmp_path / "no_clip")
