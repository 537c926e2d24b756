"""The data side: dataset TOML or JSON (config; other models' keys: foreign_keys), buckets, frame extraction
(frames), media decoding (media), the items the cache commands read (items), cache file names and contents
(cache_names, cache_files), and the batches the trainer reads (train_dataset).

Imports nothing from training/, networks/ or hunyuan_model/. Import the submodules directly: this package
re-exports nothing, so that the trainer, which reads only cached tensors, never pays for PyAV and Pillow.
"""
