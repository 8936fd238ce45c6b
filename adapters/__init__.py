"""Adaptation strategies (installed as ``samliver.adapters``): full fine-tune, decoder
replacement, LoRA, 3D depth adapters — each a config dataclass plus ``apply``, registered by
name. The strategies land with the training work; this package is their home."""
