"""Embed: CNN backbones with layer taps, batched extraction and the on-disk feature cache."""
