"""Reference actr-engine: ACT-R declarative memory over the homelab memory store."""

__version__ = "1.0.0"
