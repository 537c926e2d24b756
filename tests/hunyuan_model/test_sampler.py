"""The flow-matching Euler sampler: the update rule, the shifted schedule, CFG, seeding, validation."""

import copy

import pytest
import torch
from torch import nn

from hunyuan_model.sampler import initial_noise, latent_shape, sample_latents, shifted_sigmas
from hunyuan_model.text_encoders import TextEmbeddings


def embeddings(value: float = 0.0, tokens: int = 8, width: int = 32) -> TextEmbeddings:
    return TextEmbeddings(
        llm=torch.full((1, tokens, width), value),
        llm_mask=torch.ones(1, tokens, dtype=torch.bool),
        clip_pooled=torch.full((1, width), value),
    )


class TimeVelocity(nn.Module):
    """v = t / 1000 everywhere; records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def forward(self, x, t, text_states, text_mask, text_states_2, guidance=None):
        self.calls.append({"x": x.clone(), "t": t.clone(), "guidance": guidance.clone(), "mask": text_mask})
        return (t / 1000).view(-1, 1, 1, 1, 1).expand_as(x).clone()


class TextVelocity(nn.Module):
    """v = the mean of the LLM states of each batch row: tells conditional from unconditional rows."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x, t, text_states, text_mask, text_states_2, guidance=None):
        self.batches.append(x.shape[0])
        return text_states.float().mean(dim=(1, 2)).view(-1, 1, 1, 1, 1).expand_as(x).clone()


class ZeroVelocity(nn.Module):
    def forward(self, x, t, text_states, text_mask, text_states_2, guidance=None):
        return torch.zeros_like(x)


def run(model, **overrides):
    kwargs = dict(
        height=32,
        width=48,
        frames=5,
        steps=2,
        embedded_guidance_scale=6.0,
        flow_shift=3.0,
        seed=0,
        device="cpu",
        dtype=torch.float32,
        progress=False,
    )
    kwargs.update(overrides)
    emb = kwargs.pop("embeddings", embeddings())
    return sample_latents(model, emb, **kwargs)


def test_shifted_sigmas():
    assert torch.allclose(shifted_sigmas(4, 1.0), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = shifted_sigmas(4, 3.0)
    # t' = 3t / (1 + 2t): 0.75 -> 0.9, 0.5 -> 0.75, 0.25 -> 0.5
    assert torch.allclose(shifted, torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0]))


def test_euler_steps_follow_the_shifted_schedule_by_hand():
    model = TimeVelocity()
    noise = initial_noise(latent_shape(32, 48, 5), seed=0)
    out = run(model, steps=2, flow_shift=3.0)
    # sigmas with shift 3: 1, 0.75, 0; v(t) = t. x = noise + (0.75 - 1) * 1 + (0 - 0.75) * 0.75
    assert torch.allclose(out, noise - 0.8125, atol=1e-6)
    assert [c["t"].tolist() for c in model.calls] == [[1000.0], [750.0]]
    assert model.calls[0]["guidance"].tolist() == [6000.0]
    assert torch.equal(model.calls[0]["x"], noise)  # the first call sees the seeded noise itself


def test_one_step_with_a_constant_velocity_lands_on_noise_minus_velocity():
    class Constant(nn.Module):
        def forward(self, x, t, *args, **kwargs):
            return torch.full_like(x, 0.5)

    out = run(Constant(), steps=1, flow_shift=7.0)
    assert torch.allclose(out, initial_noise(latent_shape(32, 48, 5), 0) - 0.5)


def test_true_cfg_mixes_negative_and_positive_predictions():
    model = TextVelocity()
    noise = initial_noise(latent_shape(32, 48, 5), seed=0)
    out = run(model, steps=1, embeddings=embeddings(1.0), negative=embeddings(0.0, tokens=5), cfg_scale=3.0)
    # uncond v = 0, cond v = 1: guided v = 0 + 3 * (1 - 0) = 3; one step from sigma 1 to 0
    assert torch.allclose(out, noise - 3.0)
    assert model.batches == [2]
    plain = TextVelocity()
    out = run(plain, steps=1, embeddings=embeddings(1.0), negative=embeddings(0.0), cfg_scale=1.0)
    assert torch.allclose(out, noise - 1.0) and plain.batches == [1]  # scale 1 is no CFG: one evaluation
    with pytest.raises(ValueError, match="cfg_scale needs negative"):
        run(TextVelocity(), cfg_scale=5.0)


def test_noise_is_seeded_on_the_cpu_frame_by_frame():
    one = run(ZeroVelocity(), frames=1, seed=7)
    five = run(ZeroVelocity(), frames=5, seed=7)
    generator = torch.Generator().manual_seed(7)
    assert torch.equal(one, torch.randn((1, 16, 1, 4, 6), generator=generator))
    assert torch.equal(five[:, :, :1], one)  # the first latent frame does not depend on the length
    assert not torch.equal(five[:, :, 1], five[:, :, 0])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"steps": 0}, "steps 0"),
        ({"height": 40}, "height 40: must be a positive multiple of 16"),
        ({"width": 0}, "width 0"),
        ({"frames": 4}, "frames 4: must be 4k \\+ 1"),
        ({"frames": 0}, "frames 0"),
        ({"flow_shift": 0.0}, "flow_shift 0.0"),
    ],
)
def test_invalid_requests_are_value_errors(overrides, message):
    model = TimeVelocity()
    with pytest.raises(ValueError, match=message):
        run(model, **overrides)
    assert model.calls == []  # nothing ran


def test_batched_embeddings_are_refused():
    emb = embeddings()
    two = TextEmbeddings(emb.llm.repeat(2, 1, 1), emb.llm_mask.repeat(2, 1), emb.clip_pooled.repeat(2, 1))
    with pytest.raises(ValueError, match="one prompt at a time"):
        run(ZeroVelocity(), embeddings=two)


@pytest.fixture(scope="module")
def tiny_dit(tmp_path_factory):
    from hunyuan_model.checkpoint import load_dit
    from hunyuan_model.tiny import write_tiny_dit

    path = write_tiny_dit(tmp_path_factory.mktemp("dit"))
    return load_dit(path, torch.float32).eval()


def test_tiny_dit_shape_determinism_and_global_rng(tiny_dit):
    emb = TextEmbeddings(torch.randn(1, 8, 32), torch.ones(1, 8, dtype=torch.bool), torch.randn(1, 32))
    before = torch.random.get_rng_state()
    kwargs = dict(
        height=64,
        width=48,
        frames=5,
        steps=3,
        embedded_guidance_scale=6.0,
        flow_shift=7.0,
        device="cpu",
        dtype=torch.float32,
        progress=False,
    )
    a = sample_latents(tiny_dit, emb, seed=1, **kwargs)
    b = sample_latents(tiny_dit, emb, seed=1, **kwargs)
    c = sample_latents(tiny_dit, emb, seed=2, **kwargs)
    assert a.shape == (1, 16, 2, 8, 6) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert torch.equal(torch.random.get_rng_state(), before)  # a private generator: training RNG untouched
    # The model changed the noise: the result is not the seeded noise itself.
    assert not torch.allclose(a, initial_noise(a.shape, 1))


def test_tiny_dit_in_bfloat16_returns_float32_latents(tiny_dit):
    model = copy.deepcopy(tiny_dit).to(torch.bfloat16)
    emb = TextEmbeddings(torch.randn(1, 8, 32), torch.ones(1, 8, dtype=torch.bool), torch.randn(1, 32))
    out = sample_latents(
        model,
        emb,
        height=32,
        width=32,
        frames=1,
        steps=2,
        embedded_guidance_scale=6.0,
        flow_shift=7.0,
        seed=0,
        device="cpu",
        dtype=torch.bfloat16,
        progress=False,
    )
    assert out.dtype == torch.float32 and out.shape == (1, 16, 1, 4, 4)
    assert torch.isfinite(out).all()
