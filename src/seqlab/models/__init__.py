"""Whole architectures, one file each. ``seqlab.registry`` imports every module here (and in
``seqlab.classical``) on first use, which registers every model."""
