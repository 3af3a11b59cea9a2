"""The package's error and warning bases.

Every exception class defined in :mod:`v2s_nb` derives from :class:`V2SError` *and* from the built-in it has always
been (``NoFaceError`` is a ``V2SError`` and a ``ValueError``), so ``except V2SError`` catches the package's own
failures while a caller's ``except ValueError`` keeps working. Every warning class derives from
:class:`V2SWarning` (a ``UserWarning``), so ``warnings.simplefilter("ignore", V2SWarning)`` silences them all.

Messages name the problem and the fix in terms of the Python API (an argument, a file); the command line adds its
own flag names when it prints them (:func:`v2s_nb.cli.main`).

Areas and their classes (defined beside the code that raises them):

=========================  ===================================================================================
area                       classes
=========================  ===================================================================================
files and inputs           ``images.ImageReadError``, ``video.FrameFormatError``, ``video.VideoReadError``,
                           ``video.VideoWriteError``, ``validate.OutputPathError``, ``notebook_links.LinkError``
weights and snapshots      ``weights.WeightsUnavailableError``, ``weights.WeightsChecksumError``,
                           ``stylegan3.snapshot.SnapshotError``, ``UnsafePickleError``,
                           ``method.encoder.EncoderCheckpointError``
GPU                        ``stylegan3.graphs.CudaGraphError``, ``method.batches.GPUMemoryError``
faces                      ``face.NoFaceError``
method                     ``method.invert.InversionDivergedError``, ``method.pose_encoding.PoseUnavailableError``
caches                     :class:`CacheWarning` (an unreadable cache entry: it is recomputed)
=========================  ===================================================================================
"""

from __future__ import annotations


class V2SError(Exception):
    """Base of every exception class defined in v2s_nb."""


class V2SWarning(UserWarning):
    """Base of every warning class defined in v2s_nb."""


class CacheWarning(V2SWarning, RuntimeWarning):
    """A cache entry could not be used (unreadable, truncated, altered, other settings): it is recomputed."""


class FallbackWarning(V2SWarning, RuntimeWarning):
    """Something asked for (a model, a detector, a feature extractor) is unavailable; a named substitute is used."""


class SlowDeviceWarning(V2SWarning, RuntimeWarning):
    """A large model was put on a device where it will be very slow (a 1024 px generator on the CPU)."""
