"""Our DiT equals diffusers' HunyuanVideoTransformer3DModel on the same weights, and converts both ways."""

import pytest
import torch
from diffusers_testing import CONFIG, DIFFUSERS_CONFIG, diffusers_model, dit_inputs

from hunyuan_model.diffusers_layout import diffusers_to_original, original_to_diffusers
from hunyuan_model.model import build_dit

diffusers = pytest.importorskip("diffusers")


def test_same_output_as_diffusers():
    theirs = diffusers_model()
    ours = build_dit(CONFIG)
    ours.load_state_dict(diffusers_to_original(theirs.state_dict()), strict=True, assign=True)
    ours.eval()
    inp = dit_inputs()
    with torch.no_grad():
        a = ours(**inp)
        b = theirs(
            inp["x"],
            inp["t"],
            inp["text_states"],
            inp["text_mask"],
            inp["text_states_2"],
            inp["guidance"],
            return_dict=False,
        )[0]
    assert a.shape == inp["x"].shape
    assert a.abs().mean() > 0.05  # a real signal, not two zeros
    assert (a - b).abs().max().item() <= 1e-5


def test_padding_changes_nothing_but_what_it_should():
    """Padded text tokens must not leak into the image: extra padding gives the same output."""
    ours = build_dit(CONFIG, device="cpu").eval()
    inp = dit_inputs()
    padded = dict(inp)
    padded["text_states"] = torch.cat([inp["text_states"], torch.randn(2, 3, 24)], dim=1)
    padded["text_mask"] = torch.cat([inp["text_mask"], torch.zeros(2, 3, dtype=torch.long)], dim=1)
    with torch.no_grad():
        assert (ours(**inp) - ours(**padded)).abs().max().item() <= 1e-5


def test_round_trip_to_diffusers_layout():
    theirs = diffusers_model()
    original = diffusers_to_original(theirs.state_dict())
    back = original_to_diffusers(original)
    fresh = diffusers.HunyuanVideoTransformer3DModel(**DIFFUSERS_CONFIG)
    result = fresh.load_state_dict(back, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for key, value in theirs.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_a_batch_of_one_drops_its_padding_and_computes_the_same():
    """Batch 1 runs without an attention mask (its padded text dropped): each sample equals itself in a masked
    batch of two, where the mask does the work."""
    ours = build_dit(CONFIG, device="cpu").eval()
    inp = dit_inputs()
    assert not inp["text_mask"].all()  # the batch has padding for the mask to hide
    with torch.no_grad():
        batch = ours(**inp)
        for i in range(2):
            one = ours(**{k: v[i : i + 1] for k, v in inp.items()})
            assert (one[0] - batch[i]).abs().max().item() <= 1e-5
