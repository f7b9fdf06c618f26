"""wattpool: many GPU sites, one OpenAI-compatible inference service."""

__version__ = "0.1.0"
