"""Remote engines: vLLM-Omni, Model Studio, or any OpenAI-compatible server, behind omniserve."""

from omniserve.engines.upstream.engine import UpstreamConfigError, UpstreamEngine

__all__ = ["UpstreamConfigError", "UpstreamEngine"]
