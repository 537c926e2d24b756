"""networks/max_norm.py and LoRANetwork.apply_max_norm_regularization (--scale_weight_norms): kohya-ss's
max-norm math, checked against the full up @ down product."""

from __future__ import annotations

import pytest
import torch
from lora_testing import tiny_model, tiny_network

from networks.max_norm import apply_max_norm, update_norm


def _kohya_norm(down: torch.Tensor, up: torch.Tensor, scale: float) -> float:
    """What kohya's code computes: the (out, in) product, then its norm."""
    return float(((up.detach() @ down.detach()) * scale).norm())


def test_update_norm_is_the_norm_of_the_full_product():
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(4, 64, generator=g), torch.randn(96, 4, generator=g)
    assert float(update_norm(down, up, 0.75)) == pytest.approx(_kohya_norm(down, up, 0.75), rel=1e-5)


def test_modules_over_the_cap_are_scaled_to_it_the_others_left_alone():
    g = torch.Generator().manual_seed(1)
    big = (torch.randn(4, 32, generator=g), torch.randn(48, 4, generator=g), 1.0)
    small = (torch.randn(4, 32, generator=g) * 1e-3, torch.randn(48, 4, generator=g) * 1e-3, 1.0)
    before_small = [t.clone() for t in small[:2]]
    before_big = _kohya_norm(*big)
    cap = 2.0
    assert before_big > cap > _kohya_norm(*small)
    figures = apply_max_norm([big, small], cap, "cpu")
    assert _kohya_norm(*big) == pytest.approx(cap, rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(small[:2], before_small, strict=True))
    assert figures.keys_scaled == 1
    assert figures.max_key_norm == pytest.approx(cap, rel=1e-5)
    assert figures.average_key_norm == pytest.approx((cap + _kohya_norm(*small)) / 2, rel=1e-5)
    # kohya's quirk kept: a norm in (cap / 2, cap] is left as it is (ratio exactly 1)
    again = apply_max_norm([big], cap, "cpu")
    assert again.keys_scaled == 0


def test_the_networks_method_caps_every_module():
    network = tiny_network(tiny_model(), dim=4, alpha=2.0)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for lora in network.loras:
            lora.lora_up.weight.copy_(torch.randn(lora.lora_up.weight.shape, generator=g))
    norms = [_kohya_norm(lora.lora_down.weight, lora.lora_up.weight, lora.scale) for lora in network.loras]
    cap = sorted(norms)[len(norms) // 2]  # about half the modules are over it
    figures = network.apply_max_norm_regularization(cap, torch.device("cpu"))
    after = [_kohya_norm(lora.lora_down.weight, lora.lora_up.weight, lora.scale) for lora in network.loras]
    assert max(after) == pytest.approx(cap, rel=1e-4)
    assert figures.keys_scaled == sum(n > cap for n in norms) > 0
    assert figures.max_key_norm == pytest.approx(max(after), rel=1e-4)
