"""v2s_nb: a notebook toolkit for Video2StyleGAN face re-enactment.

Sub-packages: ``stylegan3`` (pure-PyTorch generator that loads NVIDIA snapshots safely),
``face`` (landmarks, alignment, canonical transforms, head pose), ``method`` (the paper's steps),
``video`` (reading / writing / showing clips), ``widgets`` (notebook views). Every exception the package defines is
a :class:`V2SError`, every warning a :class:`V2SWarning` (:mod:`v2s_nb.errors`); conventions and the module map are
in docs/architecture.md.
"""

from .errors import V2SError, V2SWarning

__version__ = "0.1.0"
__all__ = ["V2SError", "V2SWarning", "__version__"]
