"""The trainer: command-line arguments, the training loop and its helpers (entry: hv_train_network.py)."""
