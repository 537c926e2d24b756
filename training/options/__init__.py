"""hv_train_network.py's options as typed, frozen groups (`config.network.network_dim`): each field declares its
flag, help text, converter and default once (hv_common/options.py); training/args.py builds the parser."""

from training.options.config import BackendOptions, ModeOptions, Schedule, TrainConfig, Unit
from training.options.loop import (
    LR_SCHEDULERS,
    TIMESTEP_SAMPLINGS,
    WEIGHTING_SCHEMES,
    DataOptions,
    FlowOptions,
    OptimizerOptions,
    TrainingOptions,
)
from training.options.model import ATTENTION_BACKENDS, COMPILE_MODES, MemoryOptions, ModelOptions
from training.options.outputs import (
    HubOptions,
    LoggingOptions,
    MetadataOptions,
    SamplingOptions,
    SavingOptions,
    ValidationOptions,
    resume_target,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "COMPILE_MODES",
    "LR_SCHEDULERS",
    "TIMESTEP_SAMPLINGS",
    "WEIGHTING_SCHEMES",
    "BackendOptions",
    "DataOptions",
    "FlowOptions",
    "HubOptions",
    "LoggingOptions",
    "MemoryOptions",
    "MetadataOptions",
    "ModeOptions",
    "ModelOptions",
    "OptimizerOptions",
    "SamplingOptions",
    "SavingOptions",
    "Schedule",
    "TrainConfig",
    "TrainingOptions",
    "Unit",
    "ValidationOptions",
    "resume_target",
]
