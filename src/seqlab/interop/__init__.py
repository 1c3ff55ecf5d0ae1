"""Interoperability with other libraries' checkpoints (``seqlab.interop.hf``: Hugging Face)."""
