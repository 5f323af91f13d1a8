"""teebus: the product face — CLI, launcher, settings and Python clients."""

__version__ = "0.1.0"
