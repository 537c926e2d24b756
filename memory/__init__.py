"""GPU memory of a training step, estimated from shapes before anything loads, and its report."""
