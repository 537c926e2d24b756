"""How a run names what it writes at a step or an epoch: LoRA files, state folders, preview labels, and the
report's words for them. One format, musubi-tuner's, which users' resume folders depend on:

    <name>-step00000010.safetensors    <name>-step00000010-state    previews: <name>_step00000010_<NN>_<seed>
    <name>-000002.safetensors (epoch)  <name>-000002-state          previews: <name>_000002_<NN>_<seed>
    <name>.safetensors (the last)                                   previews: <name>_final_<NN>_<seed>
"""

from __future__ import annotations

import re

STEP_DIGITS = 8
EPOCH_DIGITS = 6
STATE_SUFFIX = "-state"
LORA_SUFFIX = ".safetensors"
FINAL_LABEL = "final"  # the previews sampled after the last step


def step_label(step: int) -> str:
    return f"step{step:0{STEP_DIGITS}d}"


def epoch_label(epoch: int) -> str:
    return f"{epoch:0{EPOCH_DIGITS}d}"


def label_for(kind: str, count: int) -> str:
    """kind: "step" or "epoch"."""
    return step_label(count) if kind == "step" else epoch_label(count)


def lora_file_name(output_name: str, step: int | None = None, epoch: int | None = None) -> str:
    """The LoRA saved at `step` (or else at the end of `epoch`); neither: the final LoRA."""
    if step is not None:
        return f"{output_name}-{step_label(step)}{LORA_SUFFIX}"
    if epoch is not None:
        return f"{output_name}-{epoch_label(epoch)}{LORA_SUFFIX}"
    return f"{output_name}{LORA_SUFFIX}"


def state_folder_name(output_name: str, kind: str, count: int) -> str:
    return f"{output_name}-{label_for(kind, count)}{STATE_SUFFIX}"


def saved_pattern(output_name: str, kind: str, state: bool = False) -> re.Pattern[str]:
    """Matches this run's step (or epoch) LoRA files, or state folders; group 1 is the count. Epoch names
    with an `epoch` prefix are this run's too (pruned with the others)."""
    suffix = re.escape(STATE_SUFFIX if state else LORA_SUFFIX)
    if kind == "step":
        return re.compile(rf"^{re.escape(output_name)}-step(\d{{{STEP_DIGITS}}}){suffix}$")
    return re.compile(rf"^{re.escape(output_name)}-(?:epoch)?(\d{{{EPOCH_DIGITS}}}){suffix}$")


def state_folder_pattern(output_name: str) -> re.Pattern[str]:
    """Any state folder of this run, by step or epoch. Another run whose name starts with this one never
    matches, nor do temporary folders (`.<name>.*.tmp`)."""
    return re.compile(rf"^{re.escape(output_name)}-(?:step|epoch)?\d+{re.escape(STATE_SUFFIX)}$")


def label_text(text: str) -> str:
    """A label in words: step00000060 -> step 60, 000002 -> epoch 2; others ("final") as they are."""
    if text.startswith("step") and text[4:].isdigit():
        return f"step {int(text[4:])}"
    return f"epoch {int(text)}" if text.isdigit() else text


def preview_stem(output_name: str | None, label: str, index: int, seed: int) -> str:
    """A preview's file name without its suffix (.mp4, or .png for one frame): index is the prompt's."""
    prefix = f"{output_name}_" if output_name else ""
    return f"{prefix}{label}_{index:02d}_{seed}"


def preview_pattern(output_name: str | None) -> re.Pattern[str]:
    """Matches preview_stem's names with their suffix: groups label, index, seed. Without output_name the
    label keeps the name's prefix."""
    prefix = re.escape(f"{output_name}_") if output_name else ""
    return re.compile(rf"^{prefix}(?P<label>.+)_(?P<index>\d{{2,}})_(?P<seed>-?\d+)\.(?:mp4|png)$")
