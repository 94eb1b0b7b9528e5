"""omniserve: a self-hosted server for the Qwen-Omni API, streamed text and speech out."""

__version__ = "0.1.0"
