"""Bijectors for deep GMMs with locally-connected transformations.

All act on a patch tensor event `[Hp, Wp, D]` (see `docs/DESIGN.md`), except
`Patchify` (which makes it) and `Dense` (on the flattened event). Every transform subclasses
`BankBijector` (`tfdgmm.bijectors.base`, the contract) and registers its config `type` in
`tfdgmm.bijectors.registry`.
"""

from tfdgmm.bijectors import registry
from tfdgmm.bijectors._bank import CHOICE_OPS, choice_ops, in_xla_context, precomposed
from tfdgmm.bijectors.base import BankBijector, WithChoice
from tfdgmm.bijectors.block_diagonal import BlockDiagonal
from tfdgmm.bijectors.dense import Dense
from tfdgmm.bijectors.diagonal import Diagonal
from tfdgmm.bijectors.half_convolution import HalfConvolution
from tfdgmm.bijectors.patchify import Patchify

__all__ = [
    "BankBijector",
    "BlockDiagonal",
    "CHOICE_OPS",
    "Dense",
    "Diagonal",
    "HalfConvolution",
    "Patchify",
    "choice_ops",
    "in_xla_context",
    "precomposed",
    "registry",
    "WithChoice",
]
