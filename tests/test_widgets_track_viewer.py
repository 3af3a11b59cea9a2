"""Canonical track viewer (section 3.2): driven programmatically, no browser and no face detector needed."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from v2s_nb.face import LandmarkTrack, canonical_track, eye_mouth_geometry, template_landmarks  # noqa: E402
from v2s_nb.widgets import TrackViewer, view_track  # noqa: E402

SIZE, T = 96, 15


@pytest.fixture(scope="module")
def clip():
    """A template face turned and shifted per frame with jitter; frame 6 has no face."""
    rng = np.random.default_rng(0)
    base = template_landmarks(SIZE)
    c = np.array([SIZE / 2 - 0.5, SIZE / 2 - 0.5])
    pts = []
    for i in range(T):
        a = np.deg2rad(10 * np.sin(2 * np.pi * i / T) + rng.normal(0, 2))
        # counter-clockwise as seen in the image (y down): x' = x cos + y sin, y' = -x sin + y cos
        rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
        pts.append((base - c) @ rot.T + c + [0.1 * SIZE * i / T + rng.normal(0, 1), 0])
    pts = np.array(pts)
    pts[6] = np.nan
    lm = LandmarkTrack.from_points(pts, SIZE)
    frames = np.tile(np.linspace(40, 200, SIZE, dtype=np.uint8)[None, None, :, None], (T, SIZE, 1, 3))
    return lm, frames


def _css(w):
    return set(w._dom_classes)


def test_kernel_slider_resmooths(clip):
    lm, frames = clip
    v = view_track(lm, frames, kernel=3)
    assert isinstance(v, TrackViewer) and v.backend == "plotly"
    raw = canonical_track(lm)
    np.testing.assert_allclose(v.raw.angle, raw.angle)
    np.testing.assert_allclose(v.smoothed.angle, raw.smooth(3).angle)
    before = np.array(v._trace("angle smoothed").y)
    np.testing.assert_allclose(before, raw.smooth(3).angle)
    seen = []
    v.on_smooth(seen.append)

    v.kernel.value = 7
    assert v.kernel.step == 2 and v.kernel.min == 3 and v.kernel.max % 2 == 1
    for key in ("tx", "ty", "angle"):
        np.testing.assert_allclose(getattr(v.smoothed, key), getattr(raw.smooth(7), key))
    after = np.array(v._trace("angle smoothed").y)
    np.testing.assert_allclose(after, v.smoothed.angle)
    np.testing.assert_allclose(np.array(v._trace("tx smoothed").y), 100 * v.smoothed.tx)
    assert np.abs(after - before).max() > 0.5  # the curve really changed
    assert np.abs(np.diff(after)).sum() < np.abs(np.diff(before)).sum()  # and got smoother
    np.testing.assert_allclose(np.array(v._trace("angle raw").y), raw.angle)  # raw untouched
    assert len(seen) == 1 and seen[0] is v.smoothed
    assert "kernel 7" in v.info.value

    v.method.value = "gaussian"
    np.testing.assert_allclose(v.smoothed.angle, raw.smooth(7, method="gaussian").angle)
    assert len(seen) == 2


def test_frame_scrubber_changes_the_frame(clip):
    lm, frames = clip
    v = TrackViewer(lm, frames)
    png0, info0 = v.image.value, v.info.value
    assert png0[:4] == b"\x89PNG" and "frame 0" in info0
    v.frame.value = 3
    assert v.image.value != png0 and "frame 3" in v.info.value
    assert list(v._trace("frame").x) == [3, 3] and list(v._trace("frame ").x) == [3]
    assert v._trace("frame ").y[0] == pytest.approx(v.smoothed.angle[3])
    assert f"{v.smoothed.angle[3]:+.2f}" in v.info.value
    v.frame.value = 6  # no face there: interpolated, said so
    assert "no face" in v.info.value and v.raw.interpolated[6]
    assert v.frame.max == T - 1 and v.play.max == T - 1


def test_frame_drawing_shows_the_eye_mouth_vector(clip):
    lm, frames = clip
    v = TrackViewer(lm, None)  # no frames: grey canvas
    img = v.render_frame(2)
    assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    e, vec = eye_mouth_geometry(lm.points[2])
    x, y = np.round(e + 0.5 * vec).astype(int)
    assert img[y, x, 0] > 200 and img[y, x, 1] < 120  # red arrow half way from the eyes to the mouth
    px, py = np.round(lm.points[2, 8]).astype(int)  # chin landmark drawn (green)
    assert img[py, px, 1] > 200
    assert (v.render_frame(6) == 60).all()  # no face: nothing drawn


def test_css_classes_and_matplotlib_backend(clip):
    lm, frames = clip
    v = TrackViewer(lm, frames)
    for w, cls in ((v.kernel, "kernel"), (v.method, "method"), (v.frame, "frame"), (v.play, "play"),
                   (v.figure, "plot"), (v.image, "image"), (v.info, "info"), (v.widget, "viewer")):
        assert f"v2s-track-{cls}" in _css(w)
    m = TrackViewer(lm, frames, backend="matplotlib", kernel=5)
    assert m.figure is None and "v2s-track-plot" in _css(m.output)
    m.kernel.value = 9
    np.testing.assert_allclose(m.smoothed.ty, canonical_track(lm).smooth(9).ty)
    np.testing.assert_allclose(m.curves()["smooth_ty"], 100 * m.smoothed.ty)


def test_even_max_kernel_is_rounded_down_to_odd(clip):
    lm, frames = clip
    v = TrackViewer(lm, frames, max_kernel=8, backend="matplotlib")
    assert v.kernel.max == 7  # 8 was a slider value that smooth() refuses
    v.kernel.value = 8  # the slider clamps to its maximum
    assert v.kernel.value == 7 and "kernel 7" in v.info.value


def test_bad_input(clip):
    lm, frames = clip
    with pytest.raises(ValueError, match="frames"):
        TrackViewer(lm, frames[:3])
    with pytest.raises(ValueError, match="kernel"):
        TrackViewer(lm, frames, kernel=4)
    with pytest.raises(ValueError, match="backend"):
        TrackViewer(lm, frames, backend="bokeh")


def test_sizes_must_match_the_landmarks(clip):
    """Frames, image_size or a CanonicalTrack of another size than the landmarks raise (points drawn elsewhere)."""
    lm, frames = clip
    with pytest.raises(ValueError, match=rf"48x48 pixels, but the LandmarkTrack was measured on {SIZE}x{SIZE}"):
        view_track(lm, frames[:, ::2, ::2])
    with pytest.raises(ValueError, match=rf"512x512 pixels but the LandmarkTrack was measured on {SIZE}x{SIZE}"):
        view_track(lm, frames, image_size=512)
    other = canonical_track(LandmarkTrack.from_points(lm.points, 2 * SIZE))
    with pytest.raises(ValueError, match="CanonicalTrack was measured on"):
        view_track(lm, frames, other)
    assert view_track(lm, frames, image_size=SIZE, backend="matplotlib").frames.shape == frames.shape


def test_face_clip_and_array_track_are_refused_saying_what_to_pass(clip, tmp_path):
    """``view_track(faces.driving)`` said "image_size=(width, height) is needed when landmarks is an array" and
    ``view_track(points, frames, faces.driving.track)`` "'numpy.ndarray' object has no attribute 'image_size'".
    A FaceClip's points are on the aligned crops (no head motion left to track) and its track is smoothed and
    sizeless: the errors now name what to pass."""
    from v2s_nb.prepare import FaceClip, Faces

    lm, frames = clip
    track = canonical_track(lm).smooth(3).as_array(face_size=True)  # [T, 4], as FaceClip.track
    fc = FaceClip(tmp_path / "driving.mp4", "video", frames, lm.points, 10.0, track, np.zeros(T, bool))
    for given in (fc, Faces(reference=fc, driving=fc)):
        with pytest.raises(TypeError, match=r"aligned crops .* pass the landmarks and frames of the original video "
                                            r"instead: vid = v2s_nb.video.read_video\('.*driving.mp4'\); "
                                            r"view_track\(v2s_nb.face.landmarks\(vid\), vid\)"):
            view_track(given)
    with pytest.raises(TypeError, match=r"track must be the raw v2s_nb.face.CanonicalTrack .* got ndarray; an array "
                                        r"\[15, 4\] \(such as FaceClip.track\) .* leave track out"):
        view_track(lm.points, frames, track, image_size=SIZE)
    with pytest.raises(TypeError, match="got list"):
        TrackViewer(lm, frames, [0, 1])


@pytest.mark.parametrize("backend", ["plotly", "matplotlib"])
def test_an_even_kernel_typed_in_the_readout_is_made_odd(clip, backend):
    """The slider's readout takes any whole number between min and max (its step of 2 is not enforced there): 4
    raised ValueError inside the callback, and the slider showed 4 while the curves stayed at the previous kernel."""
    lm, frames = clip
    v = TrackViewer(lm, frames, kernel=7, backend=backend)
    v.kernel.value = 10  # up from 7: the next odd kernel
    assert v.kernel.value == 11 and "kernel 11" in v.info.value
    np.testing.assert_allclose(v.smoothed.angle, canonical_track(lm).smooth(11).angle)
    v.kernel.value = 4  # down from 11
    assert v.kernel.value == 3 and "kernel 3" in v.info.value
    np.testing.assert_allclose(v.curves()["smooth_tx"], 100 * canonical_track(lm).smooth(3).tx)


@pytest.mark.parametrize("backend", ["plotly", "matplotlib"])
def test_close_frees_the_viewer_and_its_frames(clip, backend):
    """Closing ``viewer.widget`` left the controls (and the play / frame link) registered with ipywidgets, whose
    callbacks kept the viewer, its frames and its pictures alive."""
    import gc
    import weakref

    from ipywidgets.widgets.widget import _instances

    lm, frames = clip
    v = TrackViewer(lm, frames.copy(), backend=backend)
    ids = {w.model_id for w in (v.kernel, v.frame, v.image, v.play, v._link)}
    v.close()
    assert not ids & set(_instances) and v.frames is None
    assert v._repr_mimebundle_() == {"text/plain": "TrackViewer (closed)"}
    ref = weakref.ref(v)
    del v
    gc.collect()
    assert ref() is None
