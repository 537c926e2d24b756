"""Sampling videos from prompts: hv_generate_video.py and the previews a training run samples."""
