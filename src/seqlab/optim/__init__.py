"""Optimisers that are not ``torch.optim`` ones: full-batch quasi-Newton for convex fits."""

from seqlab.optim.owlqn import MinimizeResult, minimize, pseudo_gradient

__all__ = ["MinimizeResult", "minimize", "pseudo_gradient"]
