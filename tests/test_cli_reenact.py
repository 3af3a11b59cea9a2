"""`v2s-nb reenact` end to end on the tiny generator with driving + co-driving files on disk (few inversion
steps: the point is the plumbing, not the quality), intermediate reuse, and bad inputs."""

import warnings

import numpy as np
import pytest

from v2s_nb.cli import main, make_demo_inputs
from v2s_nb.method.reenact import LengthMismatchWarning, Reenactor
from v2s_nb.video import read_video, write_video

FAST = ["--invert-steps", "1", "--invert-steps-next", "1", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("inputs")
    ref, drv, co = make_demo_inputs(d, frames=6, size=256)
    co_short = d / "co_short.mp4"
    write_video(co_short, read_video(co).frames[:5], fps=12)  # shorter and another fps
    return ref, drv, co, co_short


@pytest.mark.slow
def test_reenact_end_to_end_then_reuse(inputs, tmp_path, capsys, monkeypatch):
    ref, drv, co, co_short = inputs
    out = tmp_path / "out.mp4"
    argv = ["reenact", "--reference", str(ref), "--driving", str(drv), "--co-driving", str(co_short),
            "--out", str(out), "--pose-batch-size", "3"] + FAST
    import v2s_nb.prepare

    pose_calls, pose_codes = [], v2s_nb.prepare.pose_codes
    monkeypatch.setattr(v2s_nb.prepare, "pose_codes", lambda *a, **kw: pose_calls.append(kw) or pose_codes(*a, **kw))
    with pytest.warns(LengthMismatchWarning):
        assert main(argv) == 0
    assert [kw["batch_size"] for kw in pose_calls] == [3]
    first = read_video(out)
    assert len(first) == 5 and first.frames.shape[1:] == (64, 64, 3)  # truncated to the shorter (co-driving)
    assert abs(first.fps - 10) < 1e-6  # the driving video's fps
    cache = tmp_path / "out.mp4.v2s"
    assert (cache / "reenactor" / "reenactor.json").is_file() and any(cache.glob("faces-video-*.npz"))
    r = Reenactor.load(cache / "reenactor")
    assert r.sources() == {"motion": "driving", "pose": "none", "position": "co-driving"}
    # ordinary-video defaults: relative expression and position, anchored at the first frame, masks of the reference
    assert (r.motion_mode, r.position_mode, r.anchor_frame()) == ("relative", "relative", 0)
    assert (r.alpha, r.beta, r.gamma, r.zeta) == (0, 0, 1, 0.5) and set(r.points) == {"reference", "driving", "co-driving"}
    assert np.all(r.position_track()[0] == 0) and r.tracks["co-driving"].shape == (5, 4)
    # second run: the intermediates are reused (no face detection, no inversion steps), same frames
    import v2s_nb.face
    import v2s_nb.method.invert

    def recomputed(*args, **kwargs):
        raise AssertionError("the second run recomputed an intermediate instead of reusing it")

    monkeypatch.setattr(v2s_nb.face, "landmarks", recomputed)
    monkeypatch.setattr(v2s_nb.method.invert, "_optimise", recomputed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LengthMismatchWarning)
        assert main(argv) == 0
    assert np.array_equal(read_video(out).frames, first.frames)


def test_reenact_with_the_papers_landmark_cnns(inputs, tmp_path, monkeypatch):
    """--detector rfb: the faces stage reads the RFB-320 detector and PFLD's 68 points (no dlib model is loaded),
    and the run goes through to the video."""
    from test_landmark_cnn import landmark_cnn_weights

    import v2s_nb.face.landmark_detection as ld

    landmark_cnn_weights()  # skips where they aren't found offline
    ref, drv, _, _ = inputs

    def no_dlib():
        raise AssertionError("--detector rfb loaded a dlib model")

    monkeypatch.setattr(ld, "_hog_detector", no_dlib)
    monkeypatch.setattr(ld, "_shape_predictor", no_dlib)
    out = tmp_path / "out.mp4"
    assert main(["reenact", "--reference", str(ref), "--driving", str(drv), "--out", str(out), "--detector", "rfb",
                 *FAST]) == 0
    assert len(read_video(out)) == 6 and len(list((tmp_path / "out.mp4.v2s").glob("faces-video-*.npz"))) == 1


def test_bad_inputs(inputs, tmp_path, capsys):
    ref, drv, co, _ = inputs
    blank = tmp_path / "blank.png"
    import skimage.io
    skimage.io.imsave(str(blank), np.full((128, 128, 3), 127, np.uint8), check_contrast=False)
    base = ["--driving", str(drv), "--out", str(tmp_path / "x.mp4")] + FAST
    assert main(["reenact", "--reference", str(blank)] + base) == 2
    assert "no face was found in the reference image" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(ref), "--alpha", "nan"] + base) == 2
    assert "finite" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(ref), "--gamma", "100"] + base) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(tmp_path / "missing.png")] + base) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(ref), "--pose-from", "co-driving"] + base) == 2
    assert "--co-driving" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(ref), "--anchor", "middle"] + base) == 2
    assert "--anchor must be first, best or a frame index" in capsys.readouterr().err
    from v2s_nb import prepare
    with pytest.MonkeyPatch.context() as mp:  # refused before the inversion runs
        mp.setattr(prepare, "inversions", lambda *a, **k: pytest.fail("the inversion ran"))
        assert main(["reenact", "--reference", str(ref), "--anchor", "10000"] + base) == 2
    assert "anchor frame 10000 is outside" in capsys.readouterr().err
    # a co-driving video shorter than the driving one:
    m = min(len(read_video(drv)), len(read_video(co))) - 1  # the frames re-enacted are the shorter's
    short = write_video(tmp_path / "co_short.mp4", read_video(co).frames[:m], 10)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prepare, "inversions", lambda *a, **k: pytest.fail("the inversion ran"))
        assert main(["reenact", "--reference", str(ref), "--co-driving", str(short), "--anchor", str(m)] + base) == 2
    assert f"anchor frame {m} is outside the {m} frames re-enacted" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(ref), "--strength", "nan"] + base) == 2
    assert "strength" in capsys.readouterr().err
    for kernel in ("1", "2", "4"):  # refused by the parser, before any landmarks run
        with pytest.raises(SystemExit):
            main(["reenact", "--reference", str(ref), "--smooth", kernel] + base)
        assert "--smooth" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # row 0 was refused by channel discovery, after faces and inversion
        main(["reenact", "--reference", str(ref), "--layers", "0-7"] + base)
    assert "row 0 drives the input's rotation" in capsys.readouterr().err
    (tmp_path / "y.mp4.v2s").write_text("not a folder")  # was "[Errno 17] File exists"
    assert main(["reenact", "--reference", str(ref), "--driving", str(drv), "--out", str(tmp_path / "y.mp4")]) == 2
    assert "y.mp4.v2s, but that is a file; move it" in capsys.readouterr().err
    assert main(["reenact", "--reference", str(ref), "--driving", str(drv), "--out", ""]) == 2
    assert "--out is empty; give a file name ending in .mp4" in capsys.readouterr().err


def test_a_tilde_in_out_is_one_folder_for_every_output(inputs, tmp_path, monkeypatch):
    """--out=~/x.mp4 (the shell leaves ~ after '=') put the video in $HOME and the Reenactor in ./~/."""
    from v2s_nb import cli

    seen = []
    monkeypatch.setattr(cli, "cmd_reenact", lambda args: seen.append(args) or 0)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main(["reenact", "--reference", "~/ref.png", "--driving", "~/d.mp4", "--out=~/o/x.mp4"]) == 0
    args = seen[0]
    assert (args.out, args.reference, args.driving) == (f"{tmp_path}/o/x.mp4", f"{tmp_path}/ref.png",
                                                        f"{tmp_path}/d.mp4")


def test_ctrl_c_while_the_arguments_are_read_is_one_line(capsys, monkeypatch):
    """A Ctrl-C while the parser imported torch for a check gave a traceback; generate's message spoke of stages."""
    from v2s_nb import cli

    def interrupted(self, args=None, namespace=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli._Parser, "parse_args", interrupted)
    assert main(["generate", "--seeds", "0"]) == 130
    assert capsys.readouterr().err == "interrupted: no output was written (one of a previous run is as it was)\n"


def test_a_checkpoint_file_is_recorded_by_its_absolute_path(tmp_path, monkeypatch):
    """The saved Reenactor names the generator file it was made with: by its absolute path, so that
    Reenactor.load works from any folder (a relative --checkpoint broke it elsewhere)."""
    import argparse
    from v2s_nb import cli
    from v2s_nb.stylegan3 import save_generator, tiny_generator
    save_generator(tiny_generator("R", resolution=64), tmp_path / "g.safetensors")
    monkeypatch.chdir(tmp_path)
    _, spec = cli._load_G(argparse.Namespace(checkpoint="g.safetensors", quiet=True), "cpu")
    assert spec == {"kind": "source", "source": str(tmp_path.resolve() / "g.safetensors")}


def test_discovery_masks_come_from_the_aligned_reference(inputs, monkeypatch):
    """--regions: masks of the aligned reference image (the paper's SegNet(I_ref^c)), landmark hulls or BiSeNet."""
    import skimage.io

    from v2s_nb.face import align_face, landmarks
    from v2s_nb.prepare import FaceClip, reference_masks

    img = skimage.io.imread(str(inputs[0]))
    tr = landmarks(img, progress=False)
    al = align_face(img, tr.points[0], 64)
    ref = FaceClip(inputs[0], "image", al.image[None], al.to_crop(tr.points[0])[None], 0.0, np.zeros((1, 3)),
                   np.zeros(1, bool))
    m = reference_masks(ref, "landmarks", device="cpu")
    assert m.source == "landmarks" and m.shape == (1, 64, 64) and m["mouth"].any() and m["eyes"].any()
    # the mouth mask sits where the reference's mouth landmarks are
    mouth = ref.points[0, 48:68].mean(0)
    ys, xs = np.nonzero(m["mouth"][0])
    assert abs(xs.mean() - mouth[0]) < 3 and abs(ys.mean() - mouth[1]) < 3
    # auto: BiSeNet where its checkpoint is found offline, else the landmark masks with a note saying why
    from v2s_nb.face import parsing

    auto = reference_masks(ref, "auto", device="cpu")
    assert auto.source == ("bisenet" if parsing.bisenet_available() else "landmarks")
    monkeypatch.setattr(parsing, "bisenet_available", lambda *a, **k: False)
    fallback = reference_masks(ref, "auto", device="cpu")
    assert fallback.source == "landmarks" and "BiSeNet" in fallback.note


def test_pose_targets_are_read_by_the_regressor_that_reads_the_renders(tmp_path, monkeypatch):
    """Eq 4 compares P_r(G(w)) with P_r(D_j): when P_r reads images, the CLI reads the targets with it too
    (not with dlib + PnP, whose own offset would shift every frame's pose)."""
    import numpy as np
    import torch

    import v2s_nb.method.pose_encoding as pe
    from v2s_nb import prepare
    from v2s_nb.stylegan3 import tiny_generator

    G = tiny_generator("R", 64)
    G.is_random = False  # pretend trained: the regressor below stands in for the CNN
    aligned = np.zeros((3, 64, 64, 3), np.uint8)
    read_poses = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])

    class Reader:
        def read(self, frames):
            assert frames is aligned
            return read_poses

    seen = {}

    def fake_encode(G_, w_ref, targets, reg, **kw):
        seen["targets"] = np.asarray(targets)
        t = np.asarray(targets)
        return pe.PoseEncoding(ws=w_ref[None].repeat(len(t), 1, 1), target=t, predicted=t, achieved=t,
                               loss_history=[], settings={})

    monkeypatch.setattr(pe, "encode_pose_sequence", fake_encode)
    w_ref = G.mapping(torch.zeros(1, G.z_dim), None)[0]
    clip = prepare.FaceClip(tmp_path / "d.mp4", "video", aligned, np.full((3, 68, 2), np.nan), 10.0,
                            np.zeros((3, 4)), np.zeros(3, bool))
    ws, targets, _ = prepare._pose_code(G, w_ref, clip, Reader(), tmp_path, "driving", 2, 1, False, None)
    assert ws.shape == (3, G.num_ws, G.w_dim) and np.array_equal(seen["targets"], read_poses)
