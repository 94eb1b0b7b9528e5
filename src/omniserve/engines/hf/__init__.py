"""In-process open Qwen-Omni weights on Hugging Face transformers (the ``transformers`` extra).

Importing this package does not import torch or transformers; loading a model does.
"""

from omniserve.engines.hf.checkpoint import CheckpointError
from omniserve.engines.hf.engine import TransformersEngine

__all__ = ["CheckpointError", "TransformersEngine"]
