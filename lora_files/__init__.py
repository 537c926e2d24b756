"""LoRA files on disk: one reader with its checks, the key layouts, conversion, merging, applying."""
