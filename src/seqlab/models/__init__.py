"""Whole architectures. Importing this package registers every model (seqlab.registry)."""

from seqlab.models import rnn, taggers, transformer  # noqa: F401
from seqlab.classical import feature_crf, hmm, hmm_tagger, markov, ngram  # noqa: F401
