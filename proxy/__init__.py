"""minicdn: an HTTP caching reverse proxy (RFC 9111) with memory and disk tiers."""

__version__ = "0.1.0"
