"""The public preparation API (v2s_nb.prepare) stage by stage on the tiny random generator: values, cache hits
on a second call, pictures, and one-line errors for bad input."""

import dataclasses

import numpy as np
import pytest
import torch

from v2s_nb import prepare as P
from v2s_nb.cli import make_demo_inputs
from v2s_nb.method.reenact import Reenactor
from v2s_nb.stylegan3 import tiny_generator
from conftest import requires_cuda

FAST = dict(invert_steps=1, invert_steps_next=1, progress=False)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    return make_demo_inputs(d, frames=3, size=256)


@pytest.fixture(scope="module")
def G():
    return tiny_generator("R", resolution=64, seed=0)


@pytest.fixture(scope="module")
def stages(inputs, G, tmp_path_factory):
    """Every stage once, with what each said."""
    cache = tmp_path_factory.mktemp("cache")
    said = []
    ref, drv, co = inputs
    faces = P.faces(ref, drv, co, resolution=G.img_resolution, cache=cache, progress=False, say=said.append)
    inv = P.inversions(G, faces, cache=cache, say=said.append, **FAST)
    ch = P.channels(inv, layers="3-7", regions="landmarks", t_fg=0.03, t_bg=0.5, cache=cache, progress=False,
                    say=said.append)
    pose = P.pose_codes(inv, ["driving", "co-driving"], cache=cache, progress=False, say=said.append)
    return dict(cache=cache, faces=faces, inv=inv, ch=ch, pose=pose, said=said)


def test_faces_values_and_cache_hit(stages, inputs, G):
    faces = stages["faces"]
    assert faces.reference.aligned.shape == (1, 64, 64, 3) and faces.reference.aligned.dtype == np.uint8
    assert len(faces.driving) == 3 and len(faces.co_driving) == 3 and faces.driving.fps == pytest.approx(10)
    assert faces.driving.points.shape == (3, 68, 2) and np.isfinite(faces.driving.points).all()
    assert faces.driving.track.shape == (3, 4) and not faces.cached
    # the reference's landmarks lie inside its aligned crop, the eyes above the mouth
    pts = faces.reference.points[0]
    assert (pts > 0).all() and (pts < 64).all() and pts[36:48, 1].mean() < pts[48:68, 1].mean()
    assert "Faces(64 px aligned crops" in repr(faces) and "driving.mp4 (3 frames at 10 fps)" in repr(faces)
    again = P.faces(*inputs, resolution=64, cache=stages["cache"], progress=False, say=None)
    assert again.cached and "from the cache" in repr(again)
    assert np.array_equal(again.driving.aligned, faces.driving.aligned)
    fig = faces.figure(frames=3)
    assert len([a for a in fig.axes if a.images]) == 2 + 3 + 3  # photo + aligned reference, 3 frames per video


def test_a_video_is_never_held_whole(stages, inputs, tmp_path, monkeypatch):
    """The faces stage decoded the whole video (a minute of 1080p: 11 GB) before the landmarks; now it reads it a
    chunk at a time, twice, and gives the same crops."""
    import v2s_nb.video

    def whole(*args, **kwargs):
        raise AssertionError("the faces stage decoded the whole video into memory")

    monkeypatch.setattr(v2s_nb.video, "read_video", whole)
    clip = P.face_clip(inputs[1], "video", 64, cache=tmp_path, progress=False, say=None)
    assert not clip.cached and np.array_equal(clip.aligned, stages["faces"].driving.aligned)
    assert np.array_equal(clip.points, stages["faces"].driving.points)


def test_inversions_values_and_cache_hit(stages, G):
    inv = stages["inv"]
    assert inv.method == "optimisation" and inv.G_render is inv.G  # random weights: PTI off by default
    assert inv.w_ref.shape == (G.num_ws, G.w_dim) and inv.ws_drive.shape == (3, G.num_ws, G.w_dim)
    assert inv.ws_codrive.shape == (3, G.num_ws, G.w_dim) and torch.isfinite(inv.ws_drive).all()
    assert np.isfinite(inv.driving.psnr).all() and "optimisation" in repr(inv)
    assert any("optimisation: reference 1 steps" in m for m in stages["said"])
    again = P.inversions(G, stages["faces"], cache=stages["cache"], say=None, **FAST)
    assert again.reference.from_cache and torch.equal(again.ws_drive, inv.ws_drive)
    # settings of the optimisation pass through: a vanishing learning rate without noise stays at w_avg
    still = P.inversions(G, stages["faces"], cache=stages["cache"], say=None,
                         invert_kwargs={"lr": 1e-9, "w_noise": 0.0}, **FAST)
    w_avg = G.mapping.w_avg.detach().cpu()
    assert torch.allclose(still.ws_drive, w_avg.expand_as(still.ws_drive), atol=1e-5)
    assert not torch.allclose(inv.ws_drive, w_avg.expand_as(inv.ws_drive), atol=1e-3)
    fig = inv.figure(frames=2)
    titles = [a.get_title() for a in fig.axes]
    assert sum("dB" in t for t in titles) == 1 + 2 + 2


def test_pti_gives_a_render_generator_closer_to_the_reference(stages, G):
    inv = P.inversions(G, stages["faces"], pti=True, pti_steps=3, cache=stages["cache"], say=None, **FAST)
    assert inv.G_render is not inv.G and inv.pti_steps == 3
    assert inv.reference_psnr_pti > float(inv.reference.psnr[0])  # tuning around the code fits the photo better
    assert "after 3 PTI steps" in repr(inv)
    assert any(a.get_title().startswith("PTI G(w)") for a in inv.figure(frames=2).axes)
    assert any(stages["cache"].glob("pti-*.safetensors"))


def test_channels_and_pose_codes(stages, G):
    ch, pose = stages["ch"], stages["pose"]
    assert ch.layers == (3, 4, 5, 6, 7) and ch.masks.source == "landmarks"
    assert set(ch.counts()) == {"eyes", "nose", "mouth"} and sum(ch.counts().values()) > 0
    assert "Channels(rows 3-7, masks from landmarks" in repr(ch)
    assert len(ch.figure().axes) == 6
    # random weights: no head pose to encode, said and kept as the reason
    assert not pose.codes and set(pose.skipped) == {"driving", "co-driving"}
    assert "random weights" in pose.skipped["driving"] and "skipped" in repr(pose)
    assert any("pose encoding (driving): skipped" in m for m in stages["said"])
    assert pose.figure() is not None


def test_reenactor_from_the_stages(stages):
    r = P.reenactor(stages["inv"], stages["ch"], stages["pose"], alpha=0.0)
    assert isinstance(r, Reenactor) and len(r) == 3
    assert r.sources() == {"motion": "driving", "pose": "none", "position": "co-driving"}
    assert r.layers == (3, 4, 5, 6, 7) and r.alpha == 0.0
    assert r.render_frame(2).shape == (64, 64, 3)
    # by default pose codes are made for the source the reenactor takes the pose from (the co-driving video)
    assert set(P.pose_codes(stages["inv"], cache=stages["cache"], progress=False, say=None).skipped) == {"co-driving"}
    # codes for another source than the pose source: said, not dropped without a word
    inv = stages["inv"]
    driving_only = P.PoseCodes({"driving": inv.ws_drive.clone()}, {}, {}, {})
    with pytest.warns(UserWarning, match=r"pose codes are for \['driving'\], not for the pose source 'co-driving'"):
        assert P.reenactor(inv, stages["ch"], driving_only).sources()["pose"] == "none"


def test_messages_go_to_stdout_and_the_cache_is_per_user(inputs, G, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "user-cache"))
    assert P.default_cache() == tmp_path / "user-cache" / "prepare"
    faces = P.faces(*inputs, resolution=64, progress=False)  # default say: print
    P.inversions(G, faces, **FAST)
    out, err = capsys.readouterr()
    assert "driving.mp4: 3 frames" in out and "optimisation" in out and not err
    assert any((tmp_path / "user-cache" / "prepare").glob("faces-video-*.npz"))
    assert any((tmp_path / "user-cache" / "prepare" / "inversions").iterdir())


def test_encoder_of_another_generator_says_it_falls_back(stages, inputs, tmp_path):
    from test_encoder import make_encoder_sd, save_released_format

    G = tiny_generator("R", resolution=64, seed=0)
    other = tiny_generator("R", resolution=64, seed=5)
    enc = save_released_format(tmp_path / "other.pt", make_encoder_sd(G.num_ws, G.w_dim, seed=11), other,
                               G.mapping.w_avg.clone(), "ProgressiveBackboneEncoder")
    said = []
    inv = P.inversions(G, stages["faces"], encoder=enc, cache=stages["cache"], say=said.append, **FAST)
    assert inv.method == "optimisation" and any("inverting by optimisation only" in m for m in said)


def test_bad_input_gets_a_clear_error(stages, inputs, G, tmp_path):
    ref, drv, co = inputs
    with pytest.raises(FileNotFoundError, match="input file not found: .*missing.mp4"):
        P.faces(ref, tmp_path / "missing.mp4", resolution=64, cache=tmp_path)
    with pytest.raises(ValueError, match="driving is None"):
        P.faces(ref, None, resolution=64, cache=tmp_path)
    for i in (0, 2):  # a picture or clip in memory failed in pathlib or as an ambiguous truth value
        args = [ref, drv, co]
        args[i] = np.zeros((2, 64, 64, 3), np.uint8)
        with pytest.raises(TypeError, match=r"must be the path of a .* file, got ndarray: save it first"):
            P.faces(*args, resolution=64, cache=tmp_path)
    with pytest.raises(ValueError, match="detector must be one of 'hog', 'cnn', 'rfb'"):
        P.faces(ref, drv, resolution=64, detector="yolo", cache=tmp_path)
    if not torch.cuda.is_available():  # before any file is read or model loaded
        with pytest.raises(ValueError, match="device='cuda', but PyTorch sees no CUDA GPU"):
            P.faces(ref, drv, resolution=64, detector="rfb", device="cuda", cache=tmp_path)
    with pytest.raises(ValueError, match="resolution must be an integer"):
        P.faces(ref, drv, resolution=64.5, cache=tmp_path)
    for kernel in (1, 2):  # before any landmarks run
        with pytest.raises(ValueError, match="smooth = .*odd number >= 3"):
            P.faces(ref, drv, resolution=64, smooth=kernel, cache=tmp_path)
        with pytest.raises(ValueError, match="smooth = .*odd number >= 3"):
            P.face_clip(drv, "video", 64, smooth=kernel, cache=tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="cache must be a folder"):
        P.faces(ref, drv, resolution=64, cache=tmp_path / "file")
    big = tiny_generator("R", resolution=128)
    with pytest.raises(ValueError, match="aligned at 64 px but the generator draws 128 px"):
        P.inversions(big, stages["faces"], cache=stages["cache"], **FAST)
    with pytest.raises(TypeError, match="Faces of v2s_nb.prepare.faces"):
        P.inversions(G, {"aligned": None}, cache=stages["cache"], **FAST)
    with pytest.raises(ValueError, match="invert_steps must be an integer in 1..100000"):
        P.inversions(G, stages["faces"], cache=stages["cache"], invert_steps=0)
    two = P.faces(ref, drv, resolution=64, cache=stages["cache"], progress=False, say=None)
    inv2 = P.inversions(G, two, cache=stages["cache"], say=None, **FAST)
    with pytest.raises(ValueError, match="needs a co-driving video"):
        P.pose_codes(inv2, "co-driving", cache=stages["cache"])
    with pytest.raises(ValueError, match="layers .* out of range"):
        P.channels(inv2, layers="3-20", cache=stages["cache"])
    with pytest.raises(ValueError, match="t_fg must be a number in \\[0, 1\\]"):
        P.channels(inv2, t_fg=2.0, cache=stages["cache"])
    with pytest.raises(ValueError, match="position='co-driving' needs a co-driving video"):
        P.reenactor(inv2, stages["ch"], position="co-driving")


def test_decoding_errors_are_kept_with_cached_faces_and_strict_still_refuses(inputs, tmp_path, monkeypatch):
    """A video's decoding errors are cached with its faces: a cache hit warns again, and strict=True refuses a clip
    first read without strict (strict is not in the key). An entry without the errors is not trusted: read again."""
    import warnings

    import v2s_nb.video as V
    from v2s_nb.errors import CacheWarning
    from v2s_nb.video import CorruptFramesWarning, VideoReadError

    drv = inputs[1]
    errs, checked = [(1, "error while decoding MB 3 2")], []
    # ffmpeg's report stands in for real damage: the same clip decodes, the errors are deterministic
    monkeypatch.setattr(V, "decode_errors", lambda path: checked.append(1) or list(errs))
    kw = dict(cache=tmp_path, progress=False, say=None)
    with pytest.warns(CorruptFramesWarning, match=r"1 decoding error\(s\) near frame\(s\) \[1\]"):
        assert not P.face_clip(drv, "video", 64, **kw).cached
    with pytest.warns(CorruptFramesWarning, match=r"near frame\(s\) \[1\] \(error while decoding MB 3 2\)"):
        assert P.face_clip(drv, "video", 64, **kw).cached
    with pytest.raises(VideoReadError, match=r"decoding error.*pass strict=False"):
        P.face_clip(drv, "video", 64, strict=True, **kw)

    (entry,) = tmp_path.glob("faces-video-*.npz")
    old = P.load_arrays(entry)
    P.save_arrays(entry, **{k: v for k, v in old.items() if not k.startswith("decode_")})  # errors lost
    n = len(checked)
    with pytest.warns(CacheWarning, match=r"missing \[.decode_frames."), \
            pytest.raises(VideoReadError, match="decoding error"):
        P.face_clip(drv, "video", 64, strict=True, **kw)
    with pytest.warns(CorruptFramesWarning):
        assert not P.face_clip(drv, "video", 64, **kw).cached  # read again, the entry written anew
    assert len(checked) == n + 2 and "decode_frames" in P.load_arrays(entry)
    with pytest.warns(CorruptFramesWarning):
        assert P.face_clip(drv, "video", 64, **kw).cached
    assert len(checked) == n + 2

    errs.clear()  # a clean clip: nothing said, strict or not, fresh or cached
    clean = tmp_path / "clean"
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptFramesWarning)
        assert not P.face_clip(drv, "video", 64, strict=True, cache=clean, progress=False, say=None).cached
        assert P.face_clip(drv, "video", 64, strict=True, cache=clean, progress=False, say=None).cached


def test_cached_pti_and_pose_codes_are_keyed_and_checked(tmp_path, monkeypatch):
    """A damaged cached PTI generator is said and done again (not a stop), in G's dtype when reused; a pose code
    is cached under the whole reference code (it had been keyed by its first row and its sum)."""
    import types

    import v2s_nb.method.invert as inv
    import v2s_nb.method.pose_encoding as pe
    from v2s_nb.errors import CacheWarning

    G = tiny_generator("R", resolution=64, seed=0).double()
    tuned = []
    monkeypatch.setattr(inv, "pivotal_tuning", lambda G, *a, **k: tuned.append(k["checkpoint"]) or G)
    ref, w = np.zeros((64, 64, 3), np.uint8), torch.zeros(G.num_ws, G.w_dim, dtype=torch.float64)
    P._pti(G, ref, w, tmp_path, 5, False, None)
    (entry,) = tmp_path.glob("pti-*.safetensors")
    assert tuned[0] == entry.with_name(entry.name.replace(".safetensors", ".resume.pt"))  # where a rerun resumes
    assert P._pti(G, ref, w, tmp_path, 5, False, None).synthesis.input.weight.dtype == torch.float64
    assert len(tuned) == 1
    entry.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{damaged}")
    with pytest.warns(CacheWarning, match="unreadable"):
        P._pti(G, ref, w, tmp_path, 5, False, None)
    assert len(tuned) == 2

    encoded = []

    def encode(G, w_ref, targets, reg, **kw):  # stands in for the optimisation: every frame's code is w_ref
        encoded.append(1)
        return types.SimpleNamespace(ws=w_ref[None].repeat(len(targets), 1, 1), achieved=np.zeros((len(targets), 3)),
                                     target=targets)

    monkeypatch.setattr(pe, "encode_pose_sequence", encode)
    reader = types.SimpleNamespace(read=lambda frames: np.zeros((len(frames), 3)))
    clip = P.FaceClip(tmp_path / "v.mp4", "video", np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 68, 2)), 25.0,
                      np.zeros((2, 4)), np.zeros(2, bool))
    w1 = torch.randn(16, 512, generator=torch.Generator().manual_seed(0))
    w2 = w1.clone()
    w2[5, 0] += 0.5
    w2[5, 1] -= 0.5  # another code of the same sum, the same first row
    codes = [P._pose_code(G, w, clip, reader, tmp_path, "driving", 10, 3, False, None)[0] for w in (w1, w2, w1)]
    assert len(encoded) == 2 and torch.equal(codes[1][0], w2) and torch.equal(codes[2][0], w1)


def test_saved_arrays_round_trip_and_objects_are_refused(tmp_path):
    """Object arrays were pickled by np.savez and then refused by load_arrays: an entry never used again."""
    arrays = {"ws": np.arange(6, dtype=np.float32).reshape(2, 3), "name": np.asarray("driving")}
    P.save_arrays(tmp_path / "a.npz", **arrays)
    back = P.load_arrays(tmp_path / "a.npz", ("ws", "name"))
    assert back["ws"].dtype == np.float32 and np.array_equal(back["ws"], arrays["ws"])
    assert str(back["name"]) == "driving"
    with pytest.raises(TypeError, match=r"\['ragged'\] hold Python objects"):
        P.save_arrays(tmp_path / "b.npz", ragged=np.asarray([np.zeros(2), np.zeros(3)], dtype=object))
    assert not (tmp_path / "b.npz").exists()


def test_cached_pti_generator_damaged_in_a_byte_or_without_digest_is_tuned_again(tmp_path, monkeypatch):
    """A flipped tensor byte still loads as finite numbers: only the digest saved with the entry finds it. An entry
    without a digest (an older v2s_nb's) cannot be checked, so it is tuned again too."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    import v2s_nb.method.invert as inv
    from v2s_nb.errors import CacheWarning

    G = tiny_generator("R", resolution=64, seed=0)
    tuned = []
    monkeypatch.setattr(inv, "pivotal_tuning", lambda G, *a, **k: tuned.append(1) or G)
    ref, w = np.zeros((64, 64, 3), np.uint8), torch.zeros(G.num_ws, G.w_dim)
    P._pti(G, ref, w, tmp_path, 5, False, None)
    (entry,) = tmp_path.glob("pti-*.safetensors")
    b = bytearray(entry.read_bytes())
    b[8 + int.from_bytes(b[:8], "little") + 400] ^= 0x01  # the low byte of a float32: stays finite
    entry.write_bytes(bytes(b))
    with pytest.warns(CacheWarning, match="digest"):
        P._pti(G, ref, w, tmp_path, 5, False, None)
    assert len(tuned) == 2
    with safe_open(str(entry), framework="pt") as f:  # as an older v2s_nb saved it: no digest
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    del meta["tensors_sha256"]
    save_file(tensors, str(entry), metadata=meta)
    with pytest.warns(CacheWarning, match="no digest"):
        P._pti(G, ref, w, tmp_path, 5, False, None)
    assert len(tuned) == 3
    P._pti(G, ref, w, tmp_path, 5, False, None)  # saved anew, with its digest: reused
    assert len(tuned) == 3


def test_outlier_frame_is_aligned_as_a_frame_without_a_face(tmp_path, monkeypatch):
    """A frame the robust smoother rejects as a false detection loses the false detection's crop and landmarks too:
    its crop square comes from its neighbours (a face, not the patch) and its points are NaN, as for a frame without
    a face. The false detection is made here: frame 2's landmarks moved 70 px (dlib once took the shuttle patch on
    the astronaut's suit for a face; it no longer does on these clips)."""
    import v2s_nb.face as face
    from v2s_nb.face import landmarks

    real = face.landmarks

    def with_a_false_face(frames, **kw):
        tr = real(frames, **kw)
        if len(tr) < 6:  # the reference photo
            return tr
        points, boxes = tr.points.copy(), tr.boxes.copy()
        points[2] += (70.0, 40.0)
        boxes[2] += (70.0, 40.0, 70.0, 40.0)  # (left, top, right, bottom)
        return dataclasses.replace(tr, points=points, boxes=boxes)

    monkeypatch.setattr(face, "landmarks", with_a_false_face)
    ref, drv, _ = make_demo_inputs(tmp_path / "in", frames=6, size=256)
    said = []
    d = P.faces(ref, drv, resolution=256, cache=tmp_path / "cache", progress=False, say=said.append).driving
    assert d.interpolated.tolist() == [False, False, True, False, False, False]
    assert any("outlier frame(s) [2]" in m for m in said)
    assert np.isnan(d.points[2]).all() and np.isfinite(d.points[~d.interpolated]).all()
    monkeypatch.setattr(face, "landmarks", real)
    assert landmarks(d.aligned, progress=False).found.all()  # every crop shows the face, frame 2's too


def _gap_video(src, dst, black=(2, 3)):
    """``src``'s frames with frames ``black`` blacked out (no face in them), written to ``dst``."""
    from v2s_nb.video import read_video, write_video

    v = read_video(src)
    frames = np.array(v.frames)
    frames[list(black)] = 0
    return write_video(dst, frames, fps=v.fps)


def test_codes_of_frames_without_a_face_are_interpolated_from_their_neighbours(tmp_path, G):
    """Frames without a face get a black crop, whose inversion (and pose code) means nothing: the reenactor gets the
    codes interpolated between the nearest frames with a face instead, for the driving and the co-driving video and
    the pose codes, while the cached inversions stay those of the crops."""
    ref, drv, co = make_demo_inputs(tmp_path / "in", frames=6, size=256)
    gaps = _gap_video(drv, tmp_path / "gaps.mp4")
    co_gaps = _gap_video(co, tmp_path / "co_gaps.mp4", black=(4, 5))  # at the end: held from frame 3
    said = []
    faces = P.faces(ref, gaps, co_gaps, resolution=64, cache=tmp_path / "cache", progress=False, say=said.append)
    assert faces.driving.interpolated[[2, 3]].all() and faces.co_driving.interpolated[[4, 5]].all()
    assert any("no face in frame(s) [2, 3]" in m and "codes are interpolated too" in m for m in said)
    inv = P.inversions(G, faces, cache=tmp_path / "cache", say=None, **FAST)
    ch = P.channels(inv, layers="3-7", regions="landmarks", t_fg=0.03, t_bg=0.5, cache=tmp_path / "cache",
                    progress=False, say=None)
    pose_ws = torch.randn(6, G.num_ws, G.w_dim, generator=torch.Generator().manual_seed(1))
    poses = P.PoseCodes({"co-driving": pose_ws.clone()}, {}, {}, {})
    r = P.reenactor(inv, ch, poses, alpha=0.0)
    wd, wc = inv.ws_drive, inv.ws_codrive

    def between(w, a, b, t):
        return w[a] * (1 - t) + w[b] * t

    gd = np.flatnonzero(~faces.driving.interpolated)
    assert torch.allclose(r.ws_drive[gd], wd[gd])  # frames with a face keep their codes
    for j in (2, 3):  # between frames 1 and 4
        assert torch.allclose(r.ws_drive[j], between(wd, 1, 4, (j - 1) / 3), atol=1e-6)
        assert not torch.allclose(r.ws_drive[j], wd[j])  # not the black crop's code
    gc = np.flatnonzero(~faces.co_driving.interpolated)
    assert torch.allclose(r.ws_codrive[gc], wc[gc]) and torch.allclose(r.pose_codes["co-driving"][gc], pose_ws[gc])
    last = gc[-1]  # 3, or 2 when the robust smoother drops frame 3 next to the gap as an outlier
    assert last <= 3
    for j in range(last + 1, 6):  # past the last frame with a face: held
        assert torch.allclose(r.ws_codrive[j], wc[last]) and torch.allclose(r.pose_codes["co-driving"][j],
                                                                           pose_ws[last])
    # the inversions themselves are untouched (still the crops' codes, as cached)
    assert torch.equal(inv.ws_drive, wd) and r.render_frame(2).shape == (64, 64, 3)


def test_fill_gaps_interpolates_rows_and_holds_the_ends():
    x = np.arange(6, dtype=float)[:, None] * np.array([[1.0, 10.0]])
    out = P._fill_gaps(x, np.array([True, False, True, True, False, True]))
    assert np.allclose(out[:, 0], [1, 1, 2, 3, 4, 4]) and np.allclose(out[:, 1], [10, 10, 20, 30, 40, 40])
    t = torch.as_tensor(x)
    assert torch.equal(P._fill_gaps(t, np.zeros(6, bool)), t)
    assert torch.allclose(P._fill_gaps(t, np.array([False, True, True, False, False, False]))[1:3, 0],
                          torch.tensor([1.0, 2.0], dtype=t.dtype))


def test_codriving_of_another_length_is_truncated_before_any_frame_is_inverted(tmp_path, G, monkeypatch):
    """Said once, at the faces stage (both lengths and the fix), and no frame past the shorter clip is inverted;
    the reenactor's own check then has nothing left to say."""
    import warnings

    import v2s_nb.method.invert as inv_mod
    from v2s_nb.method.reenact import LengthMismatchWarning

    ref, drv, _ = make_demo_inputs(tmp_path / "a", frames=3, size=256)
    _, _, co = make_demo_inputs(tmp_path / "b", frames=5, size=256)
    with pytest.warns(LengthMismatchWarning) as got:
        faces = P.faces(ref, drv, co, resolution=64, cache=tmp_path / "cache", progress=False, say=None)
    (msg,) = [str(w.message) for w in got if issubclass(w.category, LengthMismatchWarning)]
    assert "3 frames" in msg and "5" in msg and "truncated" in msg and "Trim the longer video" in msg
    assert len(faces.driving) == len(faces.co_driving) == 3
    assert len(faces.co_driving.points) == len(faces.co_driving.track) == len(faces.co_driving.interpolated) == 3
    inverted = []
    real = inv_mod.invert_sequence
    monkeypatch.setattr(inv_mod, "invert_sequence", lambda G, frames, **kw: inverted.append(len(frames))
                        or real(G, frames, **kw))
    inv = P.inversions(G, faces, cache=tmp_path / "cache", say=None, **FAST)
    assert inverted == [3, 3] and len(inv.ws_codrive) == 3
    ch = P.channels(inv, layers="3-7", regions="landmarks", t_fg=0.03, t_bg=0.5, cache=tmp_path / "cache",
                    progress=False, say=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LengthMismatchWarning)
        assert len(P.reenactor(inv, ch, None, alpha=0.0)) == 3


def test_pose_codes_whose_pose_cannot_be_measured_are_refused(stages, tmp_path, monkeypatch):
    """A generator whose re-posed references show no detectable face: no achieved pose is measured (all NaN), so
    the codes are not used: PoseUnavailableError from the stage's helper (fresh or cached), and the stage skips the
    source with a warning saying why and what to do (no pose transfer), as for a generator without a regressor."""
    import types

    import v2s_nb.method.pose_encoding as pe
    from v2s_nb.errors import FallbackWarning

    encoded = []

    def encode(G, w_ref, targets, reg, **kw):  # every frame's code is w_ref; nothing measured on it
        encoded.append(np.array(targets))
        return types.SimpleNamespace(ws=w_ref[None].repeat(len(targets), 1, 1),
                                     achieved=np.full((len(targets), 3), np.nan), target=targets)

    monkeypatch.setattr(pe, "encode_pose_sequence", encode)
    reader = types.SimpleNamespace(read=lambda frames: np.arange(len(frames) * 3, dtype=float).reshape(-1, 3))
    G = stages["inv"].G
    clip = stages["faces"].driving
    w = stages["inv"].w_ref
    for _ in range(2):  # computed, then read back from the cache: refused both times
        with pytest.raises(pe.PoseUnavailableError, match="no face was detected on any of the 3 re-posed"):
            P._pose_code(G, w, clip, reader, tmp_path, "driving", 2, 1, False, None)
    assert len(encoded) == 1
    monkeypatch.setattr(G, "is_random", False)
    monkeypatch.setattr(pe, "default_pose_regressor", lambda G, **kw: reader)
    said = []
    with pytest.warns(FallbackWarning, match=r"pose encoding \(driving\) skipped.*pose='none'"):
        pose = P.pose_codes(stages["inv"], ["driving"], cache=tmp_path / "c2", progress=False, say=said.append)
    assert not pose.codes and "no face was detected" in pose.skipped["driving"]
    assert not any("nan" in m for m in said)
    assert P.reenactor(stages["inv"], stages["ch"], pose, pose="driving").sources()["pose"] == "none"


def test_pose_targets_of_frames_without_a_face_are_interpolated(tmp_path, monkeypatch):
    """The pose read off a crop without a face is replaced by the pose between its neighbours before encoding."""
    import types

    import v2s_nb.method.pose_encoding as pe

    got, sizes = [], []

    def encode(G, w_ref, targets, reg, **kw):
        got.append(np.array(targets))
        sizes.append(kw["batch_size"])
        return types.SimpleNamespace(ws=w_ref[None].repeat(len(targets), 1, 1), achieved=np.array(targets),
                                     target=targets)

    monkeypatch.setattr(pe, "encode_pose_sequence", encode)
    G = tiny_generator("R", resolution=64, seed=0)
    reader = types.SimpleNamespace(read=lambda frames: np.array([[0, 0, 0], [99, 99, 99], [99, 99, 99],
                                                                 [6, 3, 0]], float))
    clip = P.FaceClip(tmp_path / "v.mp4", "video", np.zeros((4, 16, 16, 3), np.uint8), np.zeros((4, 68, 2)), 25.0,
                      np.zeros((4, 4)), np.array([False, True, True, False]))
    _, targets, _ = P._pose_code(G, torch.zeros(G.num_ws, G.w_dim), clip, reader, tmp_path, "driving", 2, 1, False,
                                 None, batch_size=3)
    assert np.allclose(targets, [[0, 0, 0], [2, 1, 0], [4, 2, 0], [6, 3, 0]]) and np.allclose(got[0], targets)
    assert sizes == [3]  # the stage's batch_size reaches the encoding


def test_a_moved_cache_folder_resumes_the_finished_batches(inputs, G, tmp_path, monkeypatch):
    """The batches of an interrupted video inversion are found again after the cache folder moved (``out.v2s/``
    copied to another disk, a renamed project): their key holds what they were computed from, not where."""
    import shutil

    import v2s_nb.method.invert as inv_mod

    old = tmp_path / "old"
    faces = P.faces(*inputs, resolution=G.img_resolution, cache=old, progress=False, say=None)
    first = P.inversions(G, faces, cache=old, say=None, invert_batch_size=2, **FAST)
    for entry in (old / "inversions").glob("seq-*"):  # the whole results: as if interrupted after the batches
        entry.unlink()
    new = tmp_path / "new"
    shutil.move(str(old), str(new))
    runs = []
    real = inv_mod._optimise
    monkeypatch.setattr(inv_mod, "_optimise", lambda *a, **k: runs.append(1) or real(*a, **k))
    faces = P.faces(*inputs, resolution=G.img_resolution, cache=new, progress=False, say=None)
    again = P.inversions(G, faces, cache=new, say=None, invert_batch_size=2, **FAST)
    assert runs == [] and torch.equal(again.ws_drive, first.ws_drive) and torch.equal(again.ws_codrive,
                                                                                      first.ws_codrive)


def test_pose_codes_save_their_batches_where_a_rerun_finds_them(tmp_path, monkeypatch):
    """The pose stage hands the sequence a checkpoint folder under the cache, keyed like its result (not by the
    cache's path): a rerun after Ctrl-C, or from the moved folder, passes the same one."""
    import types

    import v2s_nb.method.pose_encoding as pe

    G = tiny_generator("R", resolution=64, seed=0)
    folders = []

    def encode(G, w_ref, targets, reg, checkpoint_dir=None, **kw):
        folders.append(checkpoint_dir)
        raise KeyboardInterrupt  # interrupted part way: the stage's own entry is not written

    monkeypatch.setattr(pe, "encode_pose_sequence", encode)
    reader = types.SimpleNamespace(read=lambda frames: np.zeros((len(frames), 3)))
    clip = P.FaceClip(tmp_path / "v.mp4", "video", np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 68, 2)), 25.0,
                      np.zeros((2, 4)), np.zeros(2, bool))
    w = torch.zeros(G.num_ws, G.w_dim)
    for cache in (tmp_path / "a", tmp_path / "a", tmp_path / "b"):
        cache.mkdir(exist_ok=True)
        with pytest.raises(KeyboardInterrupt):
            P._pose_code(G, w, clip, reader, cache, "driving", 10, 3, False, None)
        assert not list(cache.glob("pose-*"))
    assert folders[0] == folders[1] and folders[0].parent == tmp_path / "a" / "pose_batches" / "driving"
    assert folders[2].relative_to(tmp_path / "b") == folders[0].relative_to(tmp_path / "a")


def test_reenactor_refuses_channels_and_pose_codes_of_other_inversions(stages, G):
    """A notebook's inversions cell re-run with another photo, but not the pose cell below it: the pose codes (and
    channels) of the old photo are refused, naming the stage to run again; the same inputs run again (equal codes,
    from the cache) are accepted."""
    inv, ch = stages["inv"], stages["ch"]
    other_ref = dataclasses.replace(inv.reference, ws=inv.reference.ws + 0.5)
    new = dataclasses.replace(inv, reference=other_ref)  # another person's photo inverted
    old_poses = P.PoseCodes({"co-driving": inv.ws_codrive.clone()}, {}, {}, {}, inversions=inv)
    with pytest.raises(ValueError, match=r"channels were made from other inputs.*run channels\(inv"):
        P.reenactor(new, ch, None)
    ch_new = dataclasses.replace(ch, inversions=new)
    with pytest.raises(ValueError, match=r"pose codes were made from other inputs.*run pose_codes\(inv"):
        P.reenactor(new, ch_new, old_poses)
    other_video = dataclasses.replace(stages["faces"], co_driving=dataclasses.replace(
        stages["faces"].co_driving, points=stages["faces"].co_driving.points + 1.0))
    with pytest.raises(ValueError, match=r"pose codes were made from other inputs"):  # same photo, other video
        P.reenactor(dataclasses.replace(inv, faces=other_video), ch, old_poses)
    again = P.inversions(G, stages["faces"], cache=stages["cache"], say=None, **FAST)  # the cell run again
    assert again is not inv and len(P.reenactor(again, ch, old_poses)) == 3
    assert P.pose_codes(inv, cache=stages["cache"], progress=False, say=None).inversions is inv
    with pytest.raises(TypeError, match="got Inversions, Channels, Channels"):
        P.reenactor(inv, ch, ch)


def test_stage_figures_take_a_sensible_number_of_frames(stages, tmp_path):
    """``frames`` beyond a clip's length draws the clip's frames (it drew one empty column per number: minutes for
    frames=400); 0, negative or non-integer counts are refused by name; the reference photo gone from disk leaves
    its crops drawn."""
    import shutil

    faces, inv = stages["faces"], stages["inv"]
    fig = faces.figure(frames=20)
    assert len(fig.axes) == 3 * 3 and fig.get_size_inches()[0] < 8  # 3 rows (photo, 2 videos) x 3 frames
    assert len(inv.figure(frames=20).axes) == 6 * 3
    for bad in (0, -1, None, 2.5, P.MAX_FIGURE_FRAMES + 1):
        with pytest.raises(ValueError, match="frames must be an integer in 1.."):
            faces.figure(frames=bad)
        with pytest.raises(ValueError, match="frames must be an integer in 1.."):
            inv.figure(frames=bad)
    moved = dataclasses.replace(faces, reference=dataclasses.replace(faces.reference,
                                                                     path=tmp_path / "uploaded.png"))
    shutil.copy(faces.reference.path, tmp_path / "uploaded.png")
    (tmp_path / "uploaded.png").unlink()  # a notebook's upload folder emptied
    fig = moved.figure(frames=2)
    assert "no longer readable" in fig.axes[0].texts[0].get_text() and fig.axes[1].images


def test_stage_arguments_users_get_wrong(stages, inputs, G, tmp_path, monkeypatch):
    """cache=True is the default folder and cache=False is refused (the stages resume from it); say=False is
    quiet; a generator's name where the generator goes, and invert_kwargs that set the stage's own settings, are
    refused before any work; numpy numbers are numbers."""
    import v2s_nb.method.invert as inv_mod

    assert P._cache(True) == P.default_cache()
    with pytest.raises(ValueError, match="cache=False"):
        P.faces(*inputs, resolution=64, cache=False, progress=False, say=None)
    P.faces(*inputs, resolution=64, cache=stages["cache"], progress=False, say=False)
    with pytest.raises(TypeError, match="G must be a generator, got str.*load_generator"):
        P.inversions("stylegan3-r-ffhq-1024", stages["faces"], cache=tmp_path)
    calls = []
    real = inv_mod.invert
    monkeypatch.setattr(inv_mod, "invert", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(ValueError, match=r"invert_kwargs sets \['batch_size'\].*invert_batch_size"):
        P.inversions(G, stages["faces"], cache=tmp_path, invert_kwargs={"batch_size": 2}, say=None, **FAST)
    assert calls == []
    ch = P.channels(stages["inv"], regions="landmarks", t_fg=np.float32(0.03), t_bg=np.float64(0.5),
                    cache=stages["cache"], progress=False, say=None)
    assert ch.sets.settings["t_fg"] == pytest.approx(0.03) and "from the cache" in repr(ch)
    r = repr(P.reenactor(stages["inv"], ch, stages["pose"]))
    assert len(r) < 400 and r.startswith("Reenactor(3 frames at 10 fps") and "channels eyes" in r


def rolling_clip(folder, frames=9, size=256):
    """(reference photo, driving clip of it turned by a known roll, the roll per frame in degrees
    counter-clockwise): the astronaut photo, and the same photo rotated about her face frame by frame."""
    import cv2
    import skimage.data

    from v2s_nb.images import save_image
    from v2s_nb.video import write_video

    img = cv2.resize(skimage.data.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    roll = 6.0 * np.sin(2 * np.pi * np.arange(frames) / (frames - 1))
    turned = [cv2.warpAffine(img, cv2.getRotationMatrix2D((size * 0.45, size * 0.35), a, 1.0), (size, size),
                             borderMode=cv2.BORDER_REFLECT_101) for a in roll]
    folder.mkdir(parents=True, exist_ok=True)
    ref = save_image(folder / "astronaut.png", img)
    return ref, write_video(folder / "turning.mp4", np.stack(turned), fps=10), roll


def test_faces_stage_with_the_papers_landmark_cnns(tmp_path):
    """detector='rfb' (the RFB-320 detector and PFLD's 68 points, as P_r and the keypoint metric read faces): the
    driving track follows the roll the clip was made with, as dlib's does; cached apart from dlib's entry."""
    from test_landmark_cnn import landmark_cnn_weights

    landmark_cnn_weights()  # skips where they aren't found offline
    ref, clip, roll = rolling_clip(tmp_path / "in")
    kw = dict(resolution=64, cache=tmp_path / "cache", smooth=0, progress=False, say=None)
    hog = P.faces(ref, clip, **kw)
    rfb = P.faces(ref, clip, detector="rfb", **kw)
    assert not (rfb.reference.cached or rfb.driving.cached)  # not dlib's entries
    assert "crops, rfb+pfld landmarks:" in repr(rfb) and "crops, hog landmarks:" in repr(hog)
    for faces in (hog, rfb):
        assert np.isfinite(faces.driving.points).all() and not faces.driving.interpolated.any()
        turn = faces.driving.track[:, 2] - faces.driving.track[0, 2]
        assert np.abs(turn - roll).max() < 1.5, (faces.driving, turn.round(2), roll.round(2))  # here 0.5-1.0
    # the same face: the reference's eyes and mouth land where dlib puts them (here 0.23 crop pixels apart)
    assert np.abs(rfb.reference.points[0, 36:68] - hog.reference.points[0, 36:68]).mean() < 1.0
    again = P.faces(ref, clip, detector="rfb", **kw)
    assert again.driving.cached and np.array_equal(again.driving.aligned, rfb.driving.aligned)
    assert again.driving.landmarks_from == "rfb+pfld"


@requires_cuda
def test_stages_and_their_figures_on_cuda(inputs, tmp_path):
    """The stages on a CUDA generator: the figures bring the GPU's tensors to the host (Channels.figure read its
    feature maps with .numpy() on the generator's device)."""
    import importlib.util

    G = tiny_generator("R", resolution=64, seed=0).cuda()
    # a GPU machine without dlib (a bare CUDA image) takes the landmark CNNs, on the GPU, where their weights are
    detector = "hog" if importlib.util.find_spec("dlib") else "rfb"
    if detector == "rfb":
        from test_landmark_cnn import landmark_cnn_weights

        landmark_cnn_weights()  # skips where they aren't found offline
    faces = P.faces(*inputs, resolution=64, cache=tmp_path, detector=detector, device="cuda", progress=False,
                    say=None)
    inv = P.inversions(G, faces, cache=tmp_path, say=None, **FAST)
    ch = P.channels(inv, regions="landmarks", t_fg=0.03, t_bg=0.5, cache=tmp_path, progress=False, say=None)
    assert len(inv.figure(frames=2).axes) == 6 * 2 and len(ch.figure().axes) == 6
    assert P.reenactor(inv, ch, None).render_frame(1).shape == (64, 64, 3)
