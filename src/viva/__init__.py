"""viva: instruction-based video editing with a VLM instructor and Edit-GRPO (VIVA)."""

__version__ = "0.1.0"
