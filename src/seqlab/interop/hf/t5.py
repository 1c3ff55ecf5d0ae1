"""Placeholder: the t5 architecture (being written)."""

from seqlab.interop.hf.architecture import Architecture

T5 = Architecture(model_type="t5", hf_class="", model="", task="", table=(), config_from_hf=None, config_to_hf=None)
