"""`txt_in`: the LLM hidden states through the individual token refiner, conditioned on t and the pooled text."""

from __future__ import annotations

import torch
from torch import nn

from .attention import attention
from .layers import MLP, TextProjection, TimestepEmbedder, apply_gate


class IndividualTokenRefinerBlock(nn.Module):
    def __init__(self, hidden_size: int, heads_num: int, mlp_width_ratio: float) -> None:
        super().__init__()
        self.heads_num = heads_num
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.self_attn_qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.self_attn_proj = nn.Linear(hidden_size, hidden_size)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=True, eps=1e-6)
        self.mlp = MLP(hidden_size, int(hidden_size * mlp_width_ratio), nn.SiLU())
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        gate_msa, gate_mlp = self.adaLN_modulation(c).chunk(2, dim=1)
        q, k, v = self.self_attn_qkv(self.norm1(x)).unflatten(2, (3, self.heads_num, -1)).unbind(2)
        x = x + apply_gate(self.self_attn_proj(attention(q, k, v, attn_mask)), gate_msa)
        return x + apply_gate(self.mlp(self.norm2(x)), gate_mlp)


class IndividualTokenRefiner(nn.Module):
    def __init__(self, hidden_size: int, heads_num: int, depth: int, mlp_width_ratio: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            IndividualTokenRefinerBlock(hidden_size, heads_num, mlp_width_ratio) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        attn_mask = None
        if mask is not None:
            valid = mask.bool()
            attn_mask = (valid[:, None, None, :] & valid[:, None, :, None]).clone()
            # A padded query row would attend to nothing (NaN); let every row see the first token.
            attn_mask[:, :, :, 0] = True
        for block in self.blocks:
            x = block(x, c, attn_mask)
        return x


class SingleTokenRefiner(nn.Module):
    def __init__(
        self, in_channels: int, hidden_size: int, heads_num: int, depth: int, mlp_width_ratio: float = 4.0
    ) -> None:
        super().__init__()
        self.input_embedder = nn.Linear(in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.c_embedder = TextProjection(in_channels, hidden_size)
        self.individual_token_refiner = IndividualTokenRefiner(hidden_size, heads_num, depth, mlp_width_ratio)

    def forward(self, x: torch.Tensor, t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            pooled = x.mean(dim=1)
        else:
            weights = mask.float().unsqueeze(-1)
            pooled = ((x.float() * weights).sum(dim=1) / weights.sum(dim=1)).to(x.dtype)
        c = self.t_embedder(t) + self.c_embedder(pooled)
        return self.individual_token_refiner(self.input_embedder(x), c, mask)
