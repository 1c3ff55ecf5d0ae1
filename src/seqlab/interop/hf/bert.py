"""Placeholder: the bert architecture (being written)."""

from seqlab.interop.hf.architecture import Architecture

BERT = Architecture(model_type="bert", hf_class="", model="", task="", table=(), config_from_hf=None, config_to_hf=None)
