"""The package version (one place; the handshake sends it)."""
__version__ = "0.1.0"
