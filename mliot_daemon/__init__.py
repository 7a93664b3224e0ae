"""mliot: one daemon that owns the machine-learning lifecycle of IoT applications."""

__version__ = "0.1.0"
