"""The caching commands: media through the VAE, captions through the text encoders, one file per item."""
