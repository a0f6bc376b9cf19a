"""stadv: spatially transformed adversarial examples (Xiao et al., ICLR 2018, arXiv 1801.02612)."""

__version__ = "0.1.0"
