"""DS-MoE blocks, one file per family. ``register.BLOCKS`` names the ones the YAML parser may use."""

from .encoder import MobileSAMEncoder, Pick

__all__ = ("MobileSAMEncoder", "Pick")
