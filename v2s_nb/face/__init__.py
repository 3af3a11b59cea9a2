"""Faces in frames: 68-point landmarks (dlib, or the PFLD CNN of :mod:`.landmark_cnn`), FFHQ alignment, canonical
transforms, head pose.

All coordinates are pixels with x to the right and y down (centre of the top-left pixel at (0, 0)); all
angles are degrees with positive = counter-clockwise as seen in the image (the convention of
:mod:`v2s_nb.stylegan3.transform`). Face-region masks come from the landmarks or from BiSeNet parsing
(:mod:`.regions`, :mod:`.parsing`).

``v2s_nb.face.landmarks`` is the detection *function*; its module is :mod:`.landmark_detection` (no submodule is
called ``landmarks``, so the name always means the function).
"""

from .align import (FFHQ_EYE_MIDPOINT, AlignedClip, AlignedFace, align_face, align_video, ffhq_crop_matrix,
                    ffhq_eye_midpoint, ffhq_quad)
from .canonical import FFHQ_FACE_SIZE, CanonicalTrack, canonical_track, eye_mouth_geometry
from .head_pose import (MODEL_INDICES, MODEL_POINTS, euler_angles, head_pose, head_pose_torch, project_model,
                        rotation_matrix)
from .landmark_detection import LandmarkTrack, NoFaceError, landmarks, model_path

__all__ = [
    "LandmarkTrack", "NoFaceError", "landmarks", "model_path",
    "FFHQ_EYE_MIDPOINT", "AlignedFace", "AlignedClip", "align_face", "align_video", "ffhq_quad",
    "ffhq_crop_matrix", "ffhq_eye_midpoint",
    "CanonicalTrack", "canonical_track", "eye_mouth_geometry", "FFHQ_FACE_SIZE",
    "MODEL_INDICES", "MODEL_POINTS", "head_pose", "head_pose_torch", "project_model", "rotation_matrix", "euler_angles",
]

# Face-region masks (eyes / nose / mouth / rest) from landmarks or BiSeNet parsing.
from .regions import (REGIONS, RegionMasks, RegionSourceWarning, masks_from_landmarks, region_masks,  # noqa: E402
                      template_landmarks)
__all__ += ["REGIONS", "RegionMasks", "RegionSourceWarning", "masks_from_landmarks", "region_masks",
            "template_landmarks"]
