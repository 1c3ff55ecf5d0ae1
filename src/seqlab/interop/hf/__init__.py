"""Hugging Face checkpoint directories in and out: GPT-2, Llama, BERT, T5, Mamba and Mamba-2.

``load_model(directory)`` reads an HF model directory (config.json and safetensors weights,
one file or sharded) into a seqlab model whose logits equal ``transformers``'; ``save_model``
writes a seqlab model back in that layout. ``import_run`` and ``export_run`` do the same for
whole runs, with their tokenizers and special tokens (``seqlab import-hf``, ``seqlab export-hf``).
Each architecture is a config translation and a weight table (``seqlab.interop.hf.mapping``),
one small file each. Nothing here downloads anything.
"""

from seqlab.interop.hf.convert import ARCHITECTURES, LoadedModel, load_model, save_model

__all__ = ["ARCHITECTURES", "LoadedModel", "load_model", "save_model"]
