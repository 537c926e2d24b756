"""LyCORIS modules in LoRA files: LoHa and LoKr on Linears, as musubi-tuner's networks/loha.py and lokr.py and
the LyCORIS package (`--network_module lycoris.kohya`) save them. Keys per module, after the module's prefix
(`lora_unet_<name>.` in the default layout, `diffusion_model.<name>.` in the `other` one):

    LoHa  hada_w1_a (out, r), hada_w1_b (r, in), hada_w2_a (out, r), hada_w2_b (r, in), alpha
          update = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r
    LoKr  lokr_w1 (a, c), or lokr_w1_a (a, r) and lokr_w1_b (r, c); lokr_w2 (b, d), or lokr_w2_a (b, r) and
          lokr_w2_b (r, d); alpha.  update = kron(w1, w2) * alpha / r (a*b, c*d); when both w1 and w2 are
          full matrices there is no r and the scale is 1 (alpha is ignored, as musubi-tuner and LyCORIS do)

A missing alpha (or 0) means alpha = r, a scale of 1, as for LoRA. What cannot be applied to a Linear as
such an update is refused in one line: Tucker factors (hada_t1/t2, lokr_t2: convolutions), DoRA's
dora_scale, and LyCORIS's other module types.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from lora_files.errors import LoRAFileError

LOHA_ROLES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
LOKR_ROLES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b")
# keys of LyCORIS modules this reader knows by name and refuses, with what they are
REFUSED_ROLES = {
    "hada_t1": "a Tucker LoHa (hada_t1 / hada_t2, for convolutions)",
    "hada_t2": "a Tucker LoHa (hada_t1 / hada_t2, for convolutions)",
    "lokr_t2": "a Tucker LoKr (lokr_t2, for convolutions)",
    "lora_mid.weight": "a Tucker LoCon (lora_mid, for convolutions)",
    "dora_scale": "a weight-decomposed (DoRA) module (dora_scale)",
    "diff": "a LyCORIS full-weight module (diff)",
    "diff_b": "a LyCORIS full-weight module (diff_b)",
    "oft_blocks": "an OFT module (oft_blocks)",
    "oft_diag": "an OFT module (oft_diag)",
    "oft_R": "a BOFT module (oft_R)",
    "on_input": "an IA3 module (on_input)",
    "a1.weight": "a GLoRA module (a1 / a2 / b1 / b2)",
    "w_norm": "a norm module (w_norm)",
    "b_norm": "a norm module (b_norm)",
}
ROLES = LOHA_ROLES + LOKR_ROLES + tuple(REFUSED_ROLES)
KNOWN = "LoRA (lora_down/lora_up, lora_A/lora_B), LoHa (hada_w*) and LoKr (lokr_w*) on Linears"


def _float(t: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    return t.to(device=device, dtype=torch.float32)


def _alpha_or(parts: Mapping[str, torch.Tensor], rank: int) -> float:
    alpha = float(parts["alpha"]) if "alpha" in parts else 0.0
    return alpha or float(rank)  # kohya's convention, as for LoRA: no alpha (or 0) is a scale of 1


@dataclass(frozen=True)
class LoHa:
    """A Hadamard product of two low-rank pairs."""

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    alpha: float

    kind = "LoHa"

    @property
    def rank(self) -> int:
        return self.w1_b.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """(out, in) of the Linear it adapts."""
        return self.w1_a.shape[0], self.w1_b.shape[1]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, multiplier: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
        """The fp32 weight update, (out, in)."""
        w1 = _float(self.w1_a, device) @ _float(self.w1_b, device)
        w2 = _float(self.w2_a, device) @ _float(self.w2_b, device)
        return (w1 * w2).mul_(multiplier * self.scale)

    @property
    def device(self) -> torch.device:
        return self.w1_a.device

    def to(self, device: torch.device) -> LoHa:
        w1_a, w1_b, w2_a, w2_b = (t.to(device) for t in (self.w1_a, self.w1_b, self.w2_a, self.w2_b))
        return replace(self, w1_a=w1_a, w1_b=w1_b, w2_a=w2_a, w2_b=w2_b)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The module's keys (after its prefix) as a file stores them."""
        return {
            "hada_w1_a": self.w1_a,
            "hada_w1_b": self.w1_b,
            "hada_w2_a": self.w2_a,
            "hada_w2_b": self.w2_b,
            "alpha": torch.tensor(self.alpha, dtype=torch.float32),
        }


@dataclass(frozen=True)
class LoKr:
    """A Kronecker product: w1 (small, full or low-rank) by w2 (full or low-rank)."""

    parts: dict[str, torch.Tensor]  # the lokr_w* tensors by role
    alpha: float | None  # as the file has it (None: no alpha key); unused when both factors are full

    kind = "LoKr"

    def _w(self, i: int, device: torch.device | str | None = None) -> torch.Tensor:
        full = self.parts.get(f"lokr_w{i}")
        if full is not None:
            return _float(full, device)
        return _float(self.parts[f"lokr_w{i}_a"], device) @ _float(self.parts[f"lokr_w{i}_b"], device)

    def _shape(self, i: int) -> tuple[int, int]:
        full = self.parts.get(f"lokr_w{i}")
        if full is not None:
            return full.shape[0], full.shape[1]
        return self.parts[f"lokr_w{i}_a"].shape[0], self.parts[f"lokr_w{i}_b"].shape[1]

    @property
    def rank(self) -> int | None:
        """r of the low-rank factor (w1's if both are), None when both are full matrices."""
        low = self.parts.get("lokr_w1_a", self.parts.get("lokr_w2_a"))
        return None if low is None else low.shape[1]

    @property
    def shape(self) -> tuple[int, int]:
        (a, c), (b, d) = self._shape(1), self._shape(2)
        return a * b, c * d

    @property
    def scale(self) -> float:
        rank = self.rank
        if rank is None:
            return 1.0  # both full: alpha is not used
        return (self.alpha or rank) / rank

    def delta(self, multiplier: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
        """The fp32 weight update, (out, in)."""
        return torch.kron(self._w(1, device), self._w(2, device)).mul_(multiplier * self.scale)

    @property
    def device(self) -> torch.device:
        return next(iter(self.parts.values())).device

    def to(self, device: torch.device) -> LoKr:
        return replace(self, parts={role: t.to(device) for role, t in self.parts.items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        out = dict(self.parts)
        if self.alpha is not None:
            out["alpha"] = torch.tensor(self.alpha, dtype=torch.float32)
        return out


def is_lycoris(parts: Mapping[str, torch.Tensor]) -> bool:
    return any(role in ROLES for role in parts)


def read_module(name: str, parts: Mapping[str, torch.Tensor], source: str) -> LoHa | LoKr:
    """One module's LyCORIS keys (by role: hada_w1_a, ..., alpha) as a LoHa or a LoKr, or a one-line error."""
    for role in sorted(parts):
        if role in REFUSED_ROLES:
            raise LoRAFileError(
                f"{source}: module {name} is {REFUSED_ROLES[role]}, which cannot be read here; this reader "
                f"knows {KNOWN}"
            )
    kinds = {
        kind
        for kind, roles in (("LoRA", ("down", "up")), ("LoHa", LOHA_ROLES), ("LoKr", LOKR_ROLES))
        if any(role in parts for role in roles)
    }
    if len(kinds) > 1:
        raise LoRAFileError(f"{source}: module {name} mixes {' and '.join(sorted(kinds))} keys")
    for role, tensor in parts.items():
        if role != "alpha" and tensor.ndim != 2:
            raise LoRAFileError(
                f"{source}: module {name}: {role} has shape {tuple(tensor.shape)}; a Linear's factors are 2-D "
                "(a convolution's LyCORIS module?)"
            )
    if kinds == {"LoHa"}:
        return _loha(name, parts, source)
    return _lokr(name, parts, source)


def _missing(name: str, parts: Mapping[str, torch.Tensor], roles: tuple[str, ...], source: str) -> None:
    missing = [role for role in roles if role not in parts]
    if missing:
        raise LoRAFileError(f"{source}: module {name} has no {', '.join(missing)}")


def _loha(name: str, parts: Mapping[str, torch.Tensor], source: str) -> LoHa:
    _missing(name, parts, LOHA_ROLES, source)
    w1a, w1b, w2a, w2b = (parts[role] for role in LOHA_ROLES)
    rank = w1b.shape[0]
    if not (
        w1a.shape[1] == rank
        and w2a.shape[1] == w2b.shape[0]
        and w1a.shape[0] == w2a.shape[0]
        and w1b.shape[1] == w2b.shape[1]
    ):
        raise LoRAFileError(
            f"{source}: module {name}: LoHa factors {tuple(w1a.shape)} @ {tuple(w1b.shape)} and "
            f"{tuple(w2a.shape)} @ {tuple(w2b.shape)} do not make two products of one shape"
        )
    return LoHa(w1a, w1b, w2a, w2b, _alpha_or(parts, rank))


def _lokr(name: str, parts: Mapping[str, torch.Tensor], source: str) -> LoKr:
    factors = {role: t for role, t in parts.items() if role in LOKR_ROLES}
    for i in (1, 2):
        full, a, b = f"lokr_w{i}", f"lokr_w{i}_a", f"lokr_w{i}_b"
        low = a in factors or b in factors
        if full in factors and low:
            raise LoRAFileError(f"{source}: module {name} has both {full} and {a} / {b}")
        if full in factors:
            continue
        if not low:
            raise LoRAFileError(f"{source}: module {name} has no {full} (nor {a} and {b})")
        _missing(name, parts, (a, b), source)
        if factors[a].shape[1] != factors[b].shape[0]:
            raise LoRAFileError(
                f"{source}: module {name}: {a} {tuple(factors[a].shape)} and {b} {tuple(factors[b].shape)} "
                "are not a low-rank pair"
            )
    ranks = {factors[f"lokr_w{i}_a"].shape[1] for i in (1, 2) if f"lokr_w{i}_a" in factors}
    if len(ranks) > 1:
        raise LoRAFileError(f"{source}: module {name}: lokr_w1_a and lokr_w2_a have different ranks")
    alpha = float(parts["alpha"]) if "alpha" in parts else None
    return LoKr(factors, alpha)
