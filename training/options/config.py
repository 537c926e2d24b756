"""The whole training configuration: one frozen dataclass of option groups, `config.network.network_dim`, the
type everything past the parser takes. `TrainConfig.of(network_dim=8)` builds one by option names (the others
keep their defaults), as a config file or the command line would."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from hv_common.errors import UserError
from hv_common.option_types import positive_float, positive_int
from hv_common.options import config_from_values, option
from networks.options import NetworkOptions
from training.options.loop import DataOptions, FlowOptions, OptimizerOptions, TrainingOptions
from training.options.model import MemoryOptions, ModelOptions
from training.options.outputs import (
    HubOptions,
    LoggingOptions,
    MetadataOptions,
    SamplingOptions,
    SavingOptions,
    ValidationOptions,
)

Unit = Literal["step", "epoch"]


@dataclass(frozen=True)
class ModeOptions:
    """what hv_train_network.py does instead of training, and where its options come from"""

    config_file: str | None = option(
        None, "read options from a TOML file; the command line wins", metavar="FILE.toml", section=""
    )
    debug_dataset: bool = option(False, "show what the dataset yields, then stop", section="data")
    list_lora_targets: str | None = option(
        None,
        "print the modules the LoRA would wrap and its param groups, then stop (no weights are loaded)",
        nargs="?",
        const="table",
        choices=("table", "json"),
        section="",
    )
    estimate_memory: bool = option(
        False,
        "print an estimate of the GPU memory of one training step, then stop (no weights are loaded)",
        section="",
    )
    vram_budget_gb: float | None = option(
        None,
        "GPU memory in GiB (24 for a 24 GB card): report the smallest --blocks_to_swap that fits",
        type=positive_float,
        section="",
    )
    estimate_resolution: tuple[int, ...] | None = option(
        None,
        "estimate for this batch instead of the largest bucket of --dataset_config",
        nargs="+",
        type=positive_int,
        metavar="W H FRAMES [BATCH]",
        section="",
    )

    def __post_init__(self) -> None:
        if self.estimate_resolution is not None and len(self.estimate_resolution) not in (3, 4):
            given = " ".join(map(str, self.estimate_resolution))
            raise UserError(f"--estimate_resolution {given}: give W H FRAMES [BATCH]")


@dataclass(frozen=True)
class BackendOptions:
    """process-wide settings: torch's CUDA flags, how the DiT file is read, musubi-tuner's DDP flags"""

    cuda_allow_tf32: bool = option(
        False, "allow TF32 in CUDA matmuls and cuDNN (Ampere or newer GPUs)", section="training"
    )
    cuda_cudnn_benchmark: bool = option(
        False, "let cuDNN benchmark and pick its fastest algorithms", section="training"
    )
    disable_numpy_memmap: bool = option(
        False,
        "read the DiT with plain reads, not memory-mapped (more RAM; the file is not kept mapped)",
        section="model",
    )
    ddp_gradient_as_bucket_view: bool = option(
        False,
        "DDP's gradient_as_bucket_view: no effect here (no DDP wrapper: one all-reduce per step), said at start",
        section="training",
    )
    ddp_static_graph: bool = option(
        False,
        "DDP's static_graph: no effect here (no DDP wrapper: one all-reduce per step), said at start",
        section="training",
    )


@dataclass(frozen=True)
class Schedule:
    """What happens every N steps (or epochs): one unit's options, named, never built from strings."""

    unit: Unit
    save_every: int | None
    keep_loras: int | None
    keep_states: int | None
    validate_every: int | None
    sample_every: int | None


@dataclass(frozen=True)
class TrainConfig:
    """hv_train_network.py's options, by concern. Each group checks its own combinations when it is built."""

    model: ModelOptions = field(default_factory=ModelOptions)
    network: NetworkOptions = field(default_factory=NetworkOptions)
    data: DataOptions = field(default_factory=DataOptions)
    training: TrainingOptions = field(default_factory=TrainingOptions)
    optimizer: OptimizerOptions = field(default_factory=OptimizerOptions)
    flow: FlowOptions = field(default_factory=FlowOptions)
    memory: MemoryOptions = field(default_factory=MemoryOptions)
    saving: SavingOptions = field(default_factory=SavingOptions)
    metadata: MetadataOptions = field(default_factory=MetadataOptions)
    logging: LoggingOptions = field(default_factory=LoggingOptions)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    validation: ValidationOptions = field(default_factory=ValidationOptions)
    modes: ModeOptions = field(default_factory=ModeOptions)
    backends: BackendOptions = field(default_factory=BackendOptions)
    hub: HubOptions = field(default_factory=HubOptions)

    @classmethod
    def of(cls, **values: Any) -> TrainConfig:
        """A configuration from option names (`TrainConfig.of(network_dim=8, seed=1)`)."""
        config: TrainConfig = config_from_values(cls, values)
        return config

    def schedule(self, unit: Unit) -> Schedule:
        s, v, p = self.saving, self.validation, self.sampling
        if unit == "step":
            return Schedule(
                unit="step",
                save_every=s.save_every_n_steps,
                keep_loras=s.save_last_n_steps,
                keep_states=s.save_last_n_steps_state,
                validate_every=v.validate_every_n_steps,
                sample_every=p.sample_every_n_steps,
            )
        return Schedule(
            unit="epoch",
            save_every=s.save_every_n_epochs,
            keep_loras=s.save_last_n_epochs,
            keep_states=s.save_last_n_epochs_state,
            validate_every=v.validate_every_n_epochs,
            sample_every=p.sample_every_n_epochs,
        )
