"""--img_in_txt_in_offloading: img_in and txt_in live in CPU memory and visit the input's device only while they
run; the trainer and hv_generate_video.py turn it on."""

from __future__ import annotations

import torch
from lora_testing import tiny_inputs, tiny_model

from generation.generate import _swap_offload_compile
from generation.options import ComputeOptions, build_parser
from hv_common.options import options_from
from training.args import parse_args
from training.run import swap_and_compile


def _embedders(model) -> list[torch.Tensor]:
    return [t for m in (model.img_in, model.txt_in) for t in [*m.parameters(), *m.buffers()]]


def test_the_embedders_visit_the_device_only_while_they_run():
    model = tiny_model()
    model.enable_img_in_txt_in_offloading()
    masters = [t.untyped_storage().data_ptr() for t in _embedders(model)]
    blocks = [p.untyped_storage().data_ptr() for p in model.double_blocks.parameters()]
    seen = []
    model.img_in.register_forward_pre_hook(
        lambda m, args: seen.append([t.untyped_storage().data_ptr() for t in m.parameters()])
    )
    with torch.no_grad():
        model(**tiny_inputs())
    n_img = len(list(model.img_in.parameters()))
    assert len(seen) == 1 and not set(seen[0]) & set(masters[:n_img])  # it ran on a device copy
    assert [t.untyped_storage().data_ptr() for t in _embedders(model)] == masters  # then the masters again
    assert [p.untyped_storage().data_ptr() for p in model.double_blocks.parameters()] == blocks  # rest: put


def test_without_the_option_nothing_moves():
    model = tiny_model()
    before = [t.untyped_storage().data_ptr() for t in _embedders(model)]
    with model._embedders_on(torch.device("cpu")):
        assert [t.untyped_storage().data_ptr() for t in _embedders(model)] == before


def test_the_forward_is_unchanged():
    model = tiny_model()
    with torch.no_grad():
        ref = model(**tiny_inputs())
        model.enable_img_in_txt_in_offloading()
        out = model(**tiny_inputs())
    assert torch.equal(out, ref)


def test_the_trainer_and_generation_turn_it_on():
    model = tiny_model()
    swap_and_compile(parse_args(["--img_in_txt_in_offloading"]).memory, model, torch.device("cpu"))
    assert model.img_in_txt_in_offloading
    plain = tiny_model()
    swap_and_compile(parse_args([]).memory, plain, torch.device("cpu"))
    assert not plain.img_in_txt_in_offloading
    required = [
        "--dit",
        "d",
        "--text_encoder1",
        "a",
        "--text_encoder2",
        "b",
        "--prompt",
        "p",
        "--save_path",
        "o",
    ]
    compute = options_from(
        ComputeOptions, build_parser().parse_args([*required, "--img_in_txt_in_offloading"])
    )
    generated = tiny_model()
    _swap_offload_compile(compute, generated, torch.device("cpu"))
    assert generated.img_in_txt_in_offloading
