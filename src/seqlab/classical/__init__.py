"""Count-based and probabilistic sequence models: Markov chains, n-grams, HMMs, CRFs."""
