"""The two transformer block kinds of HunyuanVideo, named as in the original checkpoints.

The class names matter: LoRA target selection looks for Linears inside `MMDoubleStreamBlock` and
`MMSingleStreamBlock`, as musubi-tuner does.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import attention
from .layers import MLP, ModulateDiT, RMSNorm, apply_gate, modulate
from .rope import apply_rope

Rope = tuple[torch.Tensor, torch.Tensor]


def _split_qkv(qkv: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, L, 3 * H * D) -> three (B, L, H, D) views."""
    return qkv.unflatten(2, (3, heads, -1)).unbind(2)


class MMDoubleStreamBlock(nn.Module):
    """Image and text tokens with their own weights, attending jointly."""

    attn_backend: str = "sdpa"  # set per model by attention.set_attention_backend
    img_mod: ModulateDiT  # set in __init__ per stream (setattr), with the other per-stream layers
    txt_mod: ModulateDiT

    def __init__(self, hidden_size: int, heads_num: int, mlp_width_ratio: float) -> None:
        super().__init__()
        self.heads_num = heads_num
        head_dim = hidden_size // heads_num
        mlp_hidden = int(hidden_size * mlp_width_ratio)
        for stream in ("img", "txt"):
            setattr(self, f"{stream}_mod", ModulateDiT(hidden_size, factor=6))
            setattr(self, f"{stream}_norm1", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_attn_qkv", nn.Linear(hidden_size, 3 * hidden_size))
            setattr(self, f"{stream}_attn_q_norm", RMSNorm(head_dim))
            setattr(self, f"{stream}_attn_k_norm", RMSNorm(head_dim))
            setattr(self, f"{stream}_attn_proj", nn.Linear(hidden_size, hidden_size))
            setattr(self, f"{stream}_norm2", nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6))
            setattr(self, f"{stream}_mlp", MLP(hidden_size, mlp_hidden, nn.GELU(approximate="tanh")))

    def _qkv(self, stream: str, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        qkv = getattr(self, f"{stream}_attn_qkv")(modulate(getattr(self, f"{stream}_norm1")(x), shift, scale))
        q, k, v = _split_qkv(qkv, self.heads_num)
        q = getattr(self, f"{stream}_attn_q_norm")(q).to(v)
        k = getattr(self, f"{stream}_attn_k_norm")(k).to(v)
        return q, k, v

    def _finish(self, stream: str, x: torch.Tensor, attn: torch.Tensor, mods: tuple) -> torch.Tensor:
        _, _, gate1, shift2, scale2, gate2 = mods
        x = x + apply_gate(getattr(self, f"{stream}_attn_proj")(attn), gate1)
        hidden = modulate(getattr(self, f"{stream}_norm2")(x), shift2, scale2)
        return x + apply_gate(getattr(self, f"{stream}_mlp")(hidden), gate2)

    def forward(
        self,
        img: torch.Tensor,
        txt: torch.Tensor,
        vec: torch.Tensor,
        attn_mask: torch.Tensor | None,
        rope: Rope,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img_mods = self.img_mod(vec).chunk(6, dim=-1)
        txt_mods = self.txt_mod(vec).chunk(6, dim=-1)
        img_q, img_k, img_v = self._qkv("img", img, img_mods[0], img_mods[1])
        txt_q, txt_k, txt_v = self._qkv("txt", txt, txt_mods[0], txt_mods[1])
        img_q, img_k = apply_rope(img_q, *rope), apply_rope(img_k, *rope)
        attn = attention(
            torch.cat([img_q, txt_q], dim=1),
            torch.cat([img_k, txt_k], dim=1),
            torch.cat([img_v, txt_v], dim=1),
            attn_mask,
            backend=self.attn_backend,
        )
        img_len = img.shape[1]
        img = self._finish("img", img, attn[:, :img_len], img_mods)
        txt = self._finish("txt", txt, attn[:, img_len:], txt_mods)
        return img, txt


class MMSingleStreamBlock(nn.Module):
    """Image and text tokens concatenated, one fused QKV + MLP-in projection (`linear1`) and one out (`linear2`)."""

    attn_backend: str = "sdpa"  # set per model by attention.set_attention_backend

    def __init__(self, hidden_size: int, heads_num: int, mlp_width_ratio: float) -> None:
        super().__init__()
        self.heads_num = heads_num
        self.hidden_size = hidden_size
        self.mlp_hidden_dim = int(hidden_size * mlp_width_ratio)
        head_dim = hidden_size // heads_num
        self.linear1 = nn.Linear(hidden_size, 3 * hidden_size + self.mlp_hidden_dim)
        self.linear2 = nn.Linear(hidden_size + self.mlp_hidden_dim, hidden_size)
        self.q_norm = RMSNorm(head_dim)
        self.k_norm = RMSNorm(head_dim)
        self.pre_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp_act = nn.GELU(approximate="tanh")
        self.modulation = ModulateDiT(hidden_size, factor=3)

    def forward(
        self, x: torch.Tensor, vec: torch.Tensor, img_len: int, attn_mask: torch.Tensor | None, rope: Rope
    ) -> torch.Tensor:
        shift, scale, gate = self.modulation(vec).chunk(3, dim=-1)
        fused = self.linear1(modulate(self.pre_norm(x), shift, scale))
        qkv, mlp = fused.split([3 * self.hidden_size, self.mlp_hidden_dim], dim=-1)
        q, k, v = _split_qkv(qkv, self.heads_num)
        q, k = self.q_norm(q).to(v), self.k_norm(k).to(v)
        q = torch.cat([apply_rope(q[:, :img_len], *rope), q[:, img_len:]], dim=1)
        k = torch.cat([apply_rope(k[:, :img_len], *rope), k[:, img_len:]], dim=1)
        attn = attention(q, k, v, attn_mask, backend=self.attn_backend)
        out = self.linear2(torch.cat([attn, self.mlp_act(mlp)], dim=2))
        return x + apply_gate(out, gate)
