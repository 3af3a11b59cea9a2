"""Table 1 metrics of the paper: ΔK (landmark error), ID (face-embedding distance) and FID.

* :mod:`.keypoints` - :func:`keypoint_distance` (ΔK, x and y; units: percent of the frame size by default,
  see that module for why);
* :mod:`.identity` - :func:`face_embeddings`, :func:`identity_distance` (dlib's 128-d embeddings);
* :mod:`.frechet` - :func:`frechet_distance` and pluggable feature extractors (Inception through torch-fidelity /
  pytorch-fid; offline stand-ins ``'pixels'`` and ``'dlib-face'`` that are *not* Inception);
* :mod:`.table` - :func:`evaluate`, :func:`table1` (paper layout + CSV) and the harness :func:`run_table1`.

Frames without a face are never dropped silently: every result lists them.

A *clip form* is what the metrics take as frames: uint8 RGB [T, H, W, 3], float RGB in [0, 1], RGBA or grey
[T, H, W(, 1)], as a numpy array, a torch tensor on any device or a :class:`v2s_nb.video.Video` (the full list:
:func:`v2s_nb.video.as_rgb_uint8`). An *image* is one such frame, [H, W, 3].
"""

from .frechet import (EXTRACTORS, INCEPTION_WEIGHTS, CallableFeatures, FaceEmbeddingFeatures, FeatureExtractor,
                  FIDResult, InceptionFeatures, PooledPixelFeatures, feature_statistics, fid, frechet_distance,
                  frechet_distance_features, get_feature_extractor, inception_weights)
from .identity import EMBEDDING_DIM, IdentityDistance, face_embeddings, identity_distance, reference_embedding
from .keypoints import NORMALIZATIONS, KeypointDistance, keypoint_distance, normalized_points
from .table import PAPER_TABLE1, TABLE1_COLUMNS, Table1, TableText, evaluate, run_table1, table1, write_table1_csv

__all__ = [
    "keypoint_distance", "KeypointDistance", "NORMALIZATIONS", "normalized_points",
    "face_embeddings", "identity_distance", "reference_embedding", "IdentityDistance", "EMBEDDING_DIM",
    "frechet_distance", "frechet_distance_features", "feature_statistics", "fid", "FIDResult",
    "FeatureExtractor", "PooledPixelFeatures", "FaceEmbeddingFeatures", "InceptionFeatures", "CallableFeatures",
    "get_feature_extractor", "inception_weights", "EXTRACTORS", "INCEPTION_WEIGHTS",
    "evaluate", "table1", "run_table1", "write_table1_csv", "Table1", "TableText", "TABLE1_COLUMNS", "PAPER_TABLE1",
]
