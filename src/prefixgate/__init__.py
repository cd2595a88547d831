"""prefixgate: a cache-stable gateway for Anthropic-API agents."""

__version__ = "0.1.0"
