"""The LoRA network's options (`--network_*`, `--dim_from_weights`), declared once: flag, help, default, type.

They live here, beside the network they describe, so that `networks/build.py` takes them typed while
`networks/` still imports only `hv_common`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hv_common.errors import UserError
from hv_common.option_types import positive_float, positive_int, probability
from hv_common.options import option


@dataclass(frozen=True)
class NetworkOptions:
    """LoRA network"""

    network_module: str = option(
        "networks.lora",
        "networks.lora | networks.loha | networks.lokr, or a kohya-style module (lycoris.kohya)",
    )
    network_dim: int | None = option(None, "LoRA rank (default 4)", type=positive_int)
    network_alpha: float = option(1.0, "LoRA alpha; scale = alpha/dim", type=positive_float)
    network_dropout: float | None = option(None, "dropout on the rank-r activations", type=probability)
    network_args: tuple[str, ...] = option(
        (),
        "e.g. loraplus_lr_ratio=4 \"exclude_patterns=[r'.*single_blocks.*']\" (see docs/network_args.md)",
        metavar="KEY=VALUE",
    )
    network_weights: str | None = option(None, "LoRA file to start from")
    dim_from_weights: bool = option(False, "take the rank from --network_weights")

    def __post_init__(self) -> None:
        if self.dim_from_weights and self.network_weights is None:
            raise UserError(
                "--dim_from_weights needs --network_weights (the LoRA file to read the rank from)"
            )
