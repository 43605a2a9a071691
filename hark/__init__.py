"""hark: a fully local, low-latency voice assistant."""

__version__ = "0.1.0"
