"""v2s_nb: a notebook toolkit for Video2StyleGAN face re-enactment.

Sub-packages: ``stylegan3`` (pure-PyTorch generator that loads NVIDIA snapshots safely),
``face`` (landmarks, alignment, canonical transforms, head pose), ``method`` (the paper's steps),
``video`` (reading / writing / showing clips), ``widgets`` (notebook views).
"""

__version__ = "0.1.0"
