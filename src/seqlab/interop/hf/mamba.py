"""Placeholder: Mamba and Mamba-2 (being written)."""

from seqlab.interop.hf.architecture import Architecture

MAMBA = Architecture(model_type="mamba", hf_class="", model="", task="", table=(), config_from_hf=None, config_to_hf=None)
MAMBA2 = Architecture(model_type="mamba2", hf_class="", model="", task="", table=(), config_from_hf=None,
                      config_to_hf=None)
