"""Head pose (yaw, pitch, roll in degrees) from 68 landmarks with ``cv2.solvePnP``.

A generic rigid 3-D face (:data:`MODEL_POINTS`) is fitted to six landmarks per frame with a pinhole camera
whose focal length is the image width (in pixels) and whose principal point is the image centre, without
lens distortion. The model is the six-point mean face widely published for OpenCV head-pose tutorials
(Satya Mallick, "Head Pose Estimation using OpenCV and Dlib", LearnOpenCV, 2016): nose tip (0, 0, 0),
chin (0, -330, -65), outer eye corners (-/+225, 170, -135), mouth corners (-/+150, -150, -125), in
arbitrary units (about 0.2 mm) with y up and z towards the viewer. Here it is stored in camera-aligned
axes (x right, y **down**, z **away** from the camera), i.e. with y and z negated, so that the frontal,
upright pose is the identity rotation.

Angles (degrees), for the subject seen in the image:

* ``yaw``   > 0: the face turns towards the **image right** (the subject's own left); the nose moves right.
* ``pitch`` > 0: the face tilts **up** (looks up); the nose moves up in the image.
* ``roll``  > 0: the face turns **counter-clockwise as seen**: the same sense as the canonical ``angle``
  of :mod:`v2s_nb.face.canonical` and :mod:`v2s_nb.stylegan3.transform`.

The rotation from model to camera axes is ``R = Rz(-roll) @ Ry(-yaw) @ Rx(-pitch)`` with the standard
right-handed rotation matrices of the camera axes (x right, y down, z forward). Roll is outermost, so a
rotation of the whole image about the principal point changes roll by exactly that angle.
"""

from __future__ import annotations

import numpy as np

from .landmark_detection import CHIN, LandmarkTrack, NoFaceError, _image_size, _track_size
from .canonical import _interp_missing

__all__ = ["MODEL_POINTS", "MODEL_INDICES", "head_pose", "head_pose_torch", "project_model", "rotation_matrix",
           "euler_angles"]

#: dlib landmark indices of the model points: nose tip, chin, image-left eye outer corner, image-right eye
#: outer corner, image-left mouth corner, image-right mouth corner.
MODEL_INDICES = np.array([30, CHIN, 36, 45, 48, 54])

#: Generic 3-D face [6, 3] for :data:`MODEL_INDICES`, camera-aligned axes (x right, y down, z away from the
#: camera), model units (~0.2 mm); the LearnOpenCV six-point mean face with y and z negated.
MODEL_POINTS = np.array([
    [0.0, 0.0, 0.0],          # nose tip (30)
    [0.0, 330.0, 65.0],       # chin (8)
    [-225.0, -170.0, 135.0],  # outer corner of the image-left eye (36)
    [225.0, -170.0, 135.0],   # outer corner of the image-right eye (45)
    [-150.0, 150.0, 125.0],   # image-left mouth corner (48)
    [150.0, 150.0, 125.0],    # image-right mouth corner (54)
])

#: Default distance of the model from the camera in :func:`project_model`, model units.
DEFAULT_DISTANCE = 2000.0


def _rx(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _ry(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _rz(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def rotation_matrix(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Model-to-camera rotation [3, 3] for yaw, pitch, roll in degrees (signs in the module docstring)."""
    y, p, r = np.radians([yaw, pitch, roll])
    return _rz(-r) @ _ry(-y) @ _rx(-p)


def euler_angles(rotation) -> np.ndarray:
    """(yaw, pitch, roll) in degrees [3] of a model-to-camera rotation [3, 3]; inverse of :func:`rotation_matrix`
    for |yaw| < 90."""
    m = np.asarray(rotation, np.float64)
    a = np.arctan2(m[1, 0], m[0, 0])  # about z
    b = np.arcsin(np.clip(-m[2, 0], -1.0, 1.0))  # about y
    c = np.arctan2(m[2, 1], m[2, 2])  # about x
    return -np.degrees(np.array([b, c, a]))


def _camera(size: tuple[int, int], focal: float | None) -> np.ndarray:
    """Intrinsics [3, 3]: focal length ``focal`` pixels (default the width), principal point the image centre."""
    w, h = size
    if focal is None:
        f = float(w)
    else:
        try:
            f = float(focal)
        except (TypeError, ValueError):
            f = np.nan
        if isinstance(focal, bool) or not (np.isfinite(f) and f > 0):  # 0 / NaN / inf made solvePnP return 0 deg
            raise ValueError(f"focal must be a finite focal length > 0 in pixels, got {focal!r}; leave it out "
                             f"(focal=None) for the default, the image width ({w} pixels).")
    return np.array([[f, 0, (w - 1) / 2.0], [0, f, (h - 1) / 2.0], [0, 0, 1.0]])


def project_model(yaw, pitch, roll, image_size, *, distance: float = DEFAULT_DISTANCE, center=None,
                  focal: float | None = None) -> np.ndarray:
    """Landmarks of the generic 3-D face seen at the given pose: float64 [68, 2] pixels, or [T, 68, 2] for
    arrays of angles [T]. Only the :data:`MODEL_INDICES` points are filled; all others are NaN.

    ``yaw``, ``pitch``, ``roll``: degrees (scalars or arrays of one shape [T]; signs in the module docstring).
    ``image_size``: (width, height) in pixels or an int. ``distance``: depth of the nose tip in model units
    (the default puts the outer eye corners ~0.22 widths apart). ``center``: where the nose tip projects,
    (x, y) pixels (default: the principal point, the image centre). ``focal``: focal length in pixels,
    finite > 0 (default: the image width, as :func:`head_pose` assumes).
    """
    size = _image_size(image_size)
    k = _camera(size, focal)
    yaw, pitch, roll = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in (yaw, pitch, roll)))
    scalar = yaw.ndim == 0
    yaw, pitch, roll = (np.atleast_1d(a).reshape(-1) for a in (yaw, pitch, roll))
    if not float(distance) > 0:
        raise ValueError(f"distance must be positive (model units), got {distance!r}.")
    c = k[:2, 2] if center is None else np.asarray(center, np.float64).reshape(2)
    t = np.array([(c[0] - k[0, 2]) * distance / k[0, 0], (c[1] - k[1, 2]) * distance / k[1, 1], distance])
    out = np.full((len(yaw), 68, 2), np.nan)
    for i in range(len(yaw)):
        cam = MODEL_POINTS @ rotation_matrix(yaw[i], pitch[i], roll[i]).T + t
        if np.any(cam[:, 2] <= 0):
            raise ValueError("the model is behind the camera at this pose; increase distance.")
        uv = cam @ k.T
        out[i, MODEL_INDICES] = uv[:, :2] / uv[:, 2:3]
    return out[0] if scalar else out


def _solve(img_pts: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, float]:
    """(yaw, pitch, roll) degrees and RMS reprojection error (pixels) for one frame's six points [6, 2]."""
    import cv2

    # initial guess: frontal but rolled like the eye line (from rvec 0 the solver falls into a wrong minimum
    # for |roll| >= ~150), at the depth that matches the outer-eye-corner distance
    eye = img_pts[3] - img_pts[2]
    span_px = float(np.hypot(*eye))
    span_model = float(np.hypot(*(MODEL_POINTS[3, :2] - MODEL_POINTS[2, :2])))
    z = k[0, 0] * span_model / max(span_px, 1e-6)
    tvec = np.array([[(img_pts[0, 0] - k[0, 2]) * z / k[0, 0]], [(img_pts[0, 1] - k[1, 2]) * z / k[1, 1]], [z]])
    rvec = np.array([[0.0], [0.0], [np.arctan2(eye[1], eye[0])]])  # Rz(-roll) in camera axes (y down)
    ok, rvec, tvec = cv2.solvePnP(MODEL_POINTS, img_pts.astype(np.float64), k, None, rvec, tvec,
                                  useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
    if not ok:  # pragma: no cover - iterative PnP with six points and a guess does not fail in practice
        return np.full(3, np.nan), np.inf
    proj, _ = cv2.projectPoints(MODEL_POINTS, rvec, tvec, k, None)
    err = float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - img_pts) ** 2, axis=1))))
    rot, _ = cv2.Rodrigues(rvec)
    return euler_angles(rot), err


def head_pose(landmarks_or_track, image_size=None, *, focal: float | None = None,
              interpolate: bool = True) -> np.ndarray:
    """Head pose per frame: float64 [T, 3], columns yaw, pitch, roll in degrees (signs in the module docstring).

    ``landmarks_or_track``: a :class:`~v2s_nb.face.LandmarkTrack`, or landmarks [T, 68, 2] / [68, 2] in pixels
    (NaN where no face; only points 8, 30, 36, 45, 48, 54 are used). ``image_size``: (width, height) in
    pixels or an int; needed with an array; with a LandmarkTrack taken from it (a different value raises
    ``ValueError``: the camera's principal point is the centre of the frames the points were measured on).
    ``focal``: focal length in pixels, finite and > 0 (default: the image width, a ~53 degree horizontal
    field of view); anything else raises ``ValueError``.

    Frames without a face (or without finite model points): with ``interpolate=True`` (default) their
    angles are interpolated linearly from the neighbouring frames (nearest at the ends), the policy of
    :func:`~v2s_nb.face.canonical_track`, and the track's ``found`` mask says which they are; with
    ``interpolate=False`` they are NaN. No face in any frame raises :class:`~v2s_nb.face.NoFaceError`
    when interpolating. Roll is unwrapped over time (no jump at +-180); yaw comes from an arcsin and stays
    within +-90.
    """
    if isinstance(landmarks_or_track, LandmarkTrack):
        pts, found = landmarks_or_track.points, landmarks_or_track.found
        size = _track_size(landmarks_or_track, image_size, "head_pose: image_size")
    else:
        pts = np.asarray(landmarks_or_track, np.float64)
        if pts.ndim == 2:
            pts = pts[None]
        if pts.ndim != 3 or pts.shape[1:] != (68, 2):
            raise ValueError(f"landmarks must have shape [T, 68, 2] (or [68, 2]), got {pts.shape}.")
        if image_size is None:
            raise ValueError("image_size is needed with a landmark array: pass image_size=(width, height) in pixels.")
        size = _image_size(image_size)
        found = np.ones(len(pts), bool)
    k = _camera(size, focal)
    sub = pts[:, MODEL_INDICES]
    found = found & np.isfinite(sub).all(axis=(1, 2))
    out = np.full((len(pts), 3), np.nan)
    for i in np.flatnonzero(found):
        out[i], _ = _solve(sub[i], k)
    found = found & np.isfinite(out).all(axis=1)
    if found.any():
        for j in (0, 2):  # yaw, roll: no jumps at +-180
            out[found, j] = np.unwrap(out[found, j], period=360.0)
    if not interpolate:
        return out
    if not found.any():
        raise NoFaceError(f"no face was found in any of the {len(pts)} frames, so there is no head pose to "
                          "estimate; check the clip or try landmarks(..., detector='cnn').")
    for j in range(3):
        out[:, j] = _interp_missing(out[:, j], found)
    return out


# ----------------------------------------------------------------------------------------------- differentiable


_TORCH_CONSTANTS: dict = {}


def _torch_constants(k, dtype, device):
    """(focal [2], principal point [2], model points [6, 3], pinv of the centred model points [3, 6], model indices
    (long) [6], identity [6, 6], the first two rows of the identity [2, 3], e_z [3]) for :func:`head_pose_torch`
    with intrinsics ``k``, kept per dtype and device: made from host values only once, since each copy to a GPU
    waits for it (a pose-encoding step ran a dozen such)."""
    import torch

    key = (tuple(k[:2].ravel().tolist()), dtype, torch.device(device))
    out = _TORCH_CONSTANTS.get(key)
    if out is None:
        centred = MODEL_POINTS - MODEL_POINTS.mean(0)
        host = (np.array([k[0, 0], k[1, 1]]), k[:2, 2], MODEL_POINTS, np.linalg.pinv(centred), None, np.eye(6),
                np.eye(3)[:2], np.eye(3)[2])
        out = tuple(torch.as_tensor(MODEL_INDICES, dtype=torch.long, device=device) if a is None
                    else torch.as_tensor(np.asarray(a, dtype=np.float64), device=device).to(dtype) for a in host)
        if len(_TORCH_CONSTANTS) > 64:  # many image sizes / focal lengths: start again rather than grow
            _TORCH_CONSTANTS.clear()
        _TORCH_CONSTANTS[key] = out
    return out


def _inv_sqrt_2x2(a):
    """(A)^(-1/2) of symmetric positive definite matrices [..., 2, 2], closed form (differentiable)."""
    import torch

    det = a[..., 0, 0] * a[..., 1, 1] - a[..., 0, 1] * a[..., 1, 0]
    sd = det.clamp_min(1e-30).sqrt()
    t = (a[..., 0, 0] + a[..., 1, 1] + 2 * sd).clamp_min(1e-30).sqrt()
    eye = torch.eye(2, dtype=a.dtype, device=a.device)
    root = (a + sd[..., None, None] * eye) / t[..., None, None]  # sqrt(A)
    # inverse of a 2x2: adjugate / determinant; det(sqrt A) = sqrt(det A)
    adj = torch.stack([torch.stack([root[..., 1, 1], -root[..., 0, 1]], -1),
                       torch.stack([-root[..., 1, 0], root[..., 0, 0]], -1)], -2)
    return adj / sd[..., None, None]


def _skew(v):
    """Cross-product matrices [..., 3, 3] of vectors [..., 3]."""
    import torch

    z = torch.zeros_like(v[..., 0])
    return torch.stack([torch.stack([z, -v[..., 2], v[..., 1]], -1),
                        torch.stack([v[..., 2], z, -v[..., 0]], -1),
                        torch.stack([-v[..., 1], v[..., 0], z], -1)], -2)


def _rodrigues(d):
    """Rotation matrices [..., 3, 3] of rotation vectors [..., 3] (radians), with finite gradients at 0."""
    import torch

    t2 = (d * d).sum(-1)
    small = t2 < 1e-8
    t2s = torch.where(small, torch.ones_like(t2), t2)
    th = t2s.sqrt()
    a = torch.where(small, 1 - t2 / 6, torch.sin(th) / th)
    b = torch.where(small, 0.5 - t2 / 24, (1 - torch.cos(th)) / t2s)
    k = _skew(d)
    eye = torch.eye(3, dtype=d.dtype, device=d.device)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def head_pose_torch(points, image_size, *, focal: float | None = None, iterations: int = 8, refine: int = 8):
    """Differentiable head pose: landmarks [N, 68, 2] (pixels, a tensor) -> [N, 3] yaw, pitch, roll in degrees.

    The model, camera, objective and angle conventions of :func:`head_pose` (PnP with OpenCV: the rotation and
    translation that minimise the squared reprojection error of :data:`MODEL_POINTS` on the six landmarks), solved
    with torch operations only, so gradients flow back to the landmarks:

    1. start: the scaled-orthographic fit (a 2x3 least-squares map of the centred model points, made a scaled
       rotation by its polar factor, in closed form), repeated ``iterations`` times with each image point scaled
       by its current depth ratio (the POSIT correction);
    2. ``refine`` Gauss-Newton steps on the perspective reprojection error (rotation updated by a rotation vector),
       the objective ``cv2.solvePnP`` minimises. Step 1 alone is exact for rigid views of the model but, on real
       faces whose proportions differ from the model, can differ from PnP by ~10 degrees in pitch; after step 2
       the two agree to a small fraction of a degree.

    ``image_size``: (width, height) pixels or an int; ``focal``: pixels, finite > 0 (default the width).
    """
    import torch

    pts = torch.as_tensor(points)
    if pts.ndim == 2:
        pts = pts[None]
    if pts.ndim != 3 or pts.shape[1:] != (68, 2):
        raise ValueError(f"points must be [N, 68, 2] (pixels), got {tuple(pts.shape)}")
    if not pts.is_floating_point():
        pts = pts.double()
    k = _camera(_image_size(image_size), focal)
    f, c, X, pinv, index, eye6, e2, ez = _torch_constants(k, pts.dtype, pts.device)
    img = pts[:, index]  # [N, 6, 2] pixels
    uv = (img - c) / f  # normalised image coordinates
    eps = torch.zeros(uv.shape[:2], dtype=pts.dtype, device=pts.device)  # per-point depth correction r3.X / tz
    for _ in range(max(1, int(iterations))):
        q = uv * (1 + eps)[..., None]  # [N, 6, 2] = (R[:2] X + t_xy) / tz exactly at convergence
        qm = q.mean(1, keepdim=True)
        a = (pinv @ (q - qm)).transpose(1, 2)  # [N, 2, 3]
        r12 = _inv_sqrt_2x2(a @ a.transpose(1, 2)) @ a  # rows r1, r2: orthonormal (polar factor)
        s = torch.linalg.matrix_norm(a, ord="fro") / np.sqrt(2.0)  # 1 / tz
        r3 = torch.linalg.cross(r12[:, 0], r12[:, 1], dim=-1)
        eps = (X @ r3[..., None])[..., 0] * s[:, None]
    rot = torch.cat([r12, r3[:, None]], 1)  # [N, 3, 3] model -> camera
    tz = 1.0 / s
    b = qm[:, 0] - (a @ X.mean(0)[:, None])[..., 0]  # where the nose tip (X = 0) lands, normalised
    t = torch.cat([b * tz[:, None], tz[:, None]], 1)  # [N, 3]
    for _ in range(max(0, int(refine))):
        rx = X @ rot.transpose(1, 2)  # [N, 6, 3] rotated model points
        cam = rx + t[:, None]
        z = cam[..., 2:3]
        r = (f * cam[..., :2] / z + c - img).reshape(len(img), -1)  # [N, 12] pixels
        # d(projection)/d(camera point) [N, 6, 2, 3]: rows (f / z) (e_x - x / z e_z), (f / z) (e_y - y / z e_z);
        # d(camera point)/d(rotation vector) = -[R X]x, so a row a of it gives a (-[R X]x) = (R X) x a; /d(t) = I
        dp = (f / z)[..., None] * (e2 - (cam[..., :2] / z)[..., None] * ez)
        d_rot = torch.linalg.cross(rx[:, :, None].expand_as(dp), dp, dim=-1)
        jac = torch.cat([d_rot, dp], -1).reshape(len(img), -1, 6)  # [N, 12, 6]
        jt = jac.transpose(1, 2)
        h = jt @ jac
        h = h + 1e-9 * h.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * eye6
        # solve_ex without its error check: that check waits for the GPU (a singular h gives NaN, not a raise)
        step = torch.linalg.solve_ex(h, -(jt @ r[..., None]), check_errors=False)[0][..., 0]  # [N, 6]
        rot = _rodrigues(step[:, :3]) @ rot
        t = t + step[:, 3:]
    yaw = torch.asin((-rot[:, 2, 0]).clamp(-1.0, 1.0))
    pitch = torch.atan2(rot[:, 2, 1], rot[:, 2, 2])
    roll = torch.atan2(rot[:, 1, 0], rot[:, 0, 0])
    return -torch.rad2deg(torch.stack([yaw, pitch, roll], 1))
