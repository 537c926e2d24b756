"""AdamW that does not import torch._dynamo: torch.optim.AdamW, minus dynamo's wrappers around its methods.

Why: torch.optim.Optimizer wraps add_param_group, zero_grad, state_dict and load_state_dict in
torch._disable_dynamo, and Adam.step in _use_grad_for_differentiable; both wrappers `import torch._dynamo` on
their first call (the constructor's first add_param_group), which costs a plain run about 1.5 s and 71 MiB at
start-up. All they do is keep a torch.compile trace out of the optimizer and set the grad mode. The trainer
never traces the optimizer (--compile compiles the DiT's blocks, and the optimizer runs outside them), so this
class calls the functions the wrappers wrap (their functools `__wrapped__`) under the grad mode step() would
set. The update, the state and its state_dict are torch's own: tests/e2e/test_startup.py checks them equal.
"""

from __future__ import annotations

import inspect

import torch

# inspect.unwrap follows __wrapped__ down to the function itself (through Optimizer's profiling hook, which
# patches the class's step in place, and dynamo's wrapper); it returns the function as is where none wraps it.
_RAW = {
    name: inspect.unwrap(getattr(torch.optim.Optimizer, name))
    for name in ("add_param_group", "zero_grad", "state_dict", "load_state_dict")
}
_RAW_STEP = inspect.unwrap(torch.optim.AdamW.step)


class EagerAdamW(torch.optim.AdamW):
    """torch.optim.AdamW for a run that never traces its optimizer (same update, same state_dict)."""

    def add_param_group(self, param_group: dict) -> None:
        _RAW["add_param_group"](self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _RAW["zero_grad"](self, set_to_none)

    def state_dict(self) -> dict:
        return _RAW["state_dict"](self)

    def load_state_dict(self, state_dict: dict) -> None:
        _RAW["load_state_dict"](self, state_dict)

    def step(self, closure=None):
        # what _use_grad_for_differentiable does around it, less its dynamo graph breaks
        with torch.set_grad_enabled(self.defaults["differentiable"]):
            return _RAW_STEP(self, closure)
