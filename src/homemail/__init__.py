"""homemail: a self-hosted mail server."""

__version__ = "0.1.0"
