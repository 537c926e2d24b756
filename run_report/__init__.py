"""What a run shows a person: the loss plot and the self-contained HTML report of the run."""
