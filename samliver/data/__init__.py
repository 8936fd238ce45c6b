"""Datasets, CT preprocessing, synthetic phantoms and tumour synthesis.

Labels follow LiTS/MSD: 0 background, 1 liver, 2 tumour.
"""

from .case import Case

__all__ = ["Case"]
