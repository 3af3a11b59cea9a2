"""The command line's checks made before any work: the demo's --out, --device, the inputs of reenact (folders, a
still image given as a video), and the flag hints added to caught errors (the right flag, said once)."""

import pathlib

import numpy as np
import pytest

from v2s_nb import cli
from v2s_nb.video import VideoReadError


def _run(argv, capsys):
    """(exit status, stderr) of ``v2s-nb argv``, whether argparse or main reports the error."""
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


@pytest.fixture
def no_work(monkeypatch):
    """Every long step of demo / reenact fails the test if it starts."""
    import v2s_nb.demo
    import v2s_nb.prepare

    def started(*args, **kwargs):
        pytest.fail("the work started before the arguments were checked")

    for mod, name in ((v2s_nb.demo, "run_demo"), (v2s_nb.demo, "write_inputs"), (v2s_nb.prepare, "faces"),
                      (v2s_nb.prepare, "face_clip"), (cli, "_load_G")):
        monkeypatch.setattr(mod, name, started)


@pytest.fixture
def media(tmp_path):
    """A photo, a 3-frame video and a 2-frame animated GIF (contents do not matter: nothing is read past them)."""
    from PIL import Image

    from v2s_nb.video import write_video

    frames = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), np.uint8)
    photo = tmp_path / "photo.png"
    Image.fromarray(frames[0]).save(photo)
    gif = tmp_path / "anim.gif"
    Image.fromarray(frames[0]).save(gif, save_all=True, append_images=[Image.fromarray(frames[1])])
    return {"photo": photo, "video": write_video(tmp_path / "clip.mp4", frames, fps=10), "gif": gif}


# ------------------------------------------------------------------------------------------------ demo --out


@pytest.mark.parametrize("checkpoint", [False, True], ids=["fitted", "checkpoint"])
def test_demo_checks_out_before_any_work(tmp_path, capsys, no_work, checkpoint):
    extra = ["--checkpoint", "stylegan3-r-ffhq-1024"] if checkpoint else []
    rc, err = _run(["demo", "--out", str(tmp_path / "demo2.gif"), "--frames", "2", "--quiet"] + extra, capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert "--out" in err and "demo2.gif" in err and ".mp4" in err and ".tmp" not in err
    (tmp_path / "afile").write_text("x")  # a parent of --out is a file: not a raw "[Errno 20] Not a directory"
    rc, err = _run(["demo", "--out", str(tmp_path / "afile" / "demo.mp4"), "--quiet"] + extra, capsys)
    assert rc == 2 and "--out" in err and "is a file" in err and "Errno" not in err, err
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "demo_side_by_side.mp4").mkdir()  # a companion's name is taken by a folder
    rc, err = _run(["demo", "--out", str(tmp_path / "d" / "demo.mp4"), "--quiet"] + extra, capsys)
    assert rc == 2 and "demo_side_by_side.mp4" in err and "folder" in err and "--out" in err, err
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "demo_inputs").write_text("x")  # the inputs folder's name is taken by a file
    rc, err = _run(["demo", "--out", str(tmp_path / "e" / "demo.mp4"), "--quiet"] + extra, capsys)
    assert rc == 2 and "demo_inputs" in err and "is a file" in err, err
    assert not any(tmp_path.glob("**/*.v2s")) and not any(tmp_path.glob("**/*_inputs/"))


# --------------------------------------------------------------------------------------------------- --device


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:", "mps"])
@pytest.mark.parametrize("command", ["generate", "reenact", "demo"])
def test_a_bad_device_is_refused_in_one_line_naming_the_valid_ones(tmp_path, capsys, no_work, media, command,
                                                                   device):
    argv = {"generate": ["generate", "--out", str(tmp_path / "g.png")],
            "reenact": ["reenact", "--reference", str(media["photo"]), "--driving", str(media["video"]), "--out",
                        str(tmp_path / "r.mp4")],
            "demo": ["demo", "--out", str(tmp_path / "d.mp4")]}[command]
    rc, err = _run(argv + ["--device", device, "--quiet"], capsys)
    assert rc == 2 and err.count("\n") == 1, err
    assert "--device" in err and "cpu, cuda, cuda:N" in err and "auto" in err and "Expected one of" not in err
    assert not (tmp_path / "g.png").exists()


def test_device_names(monkeypatch):
    import torch

    assert cli.device_name(" CUDA:1 ") == "cuda:1" and cli.device_name("Auto") == "auto"
    assert cli._device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device .*gpu.* cpu, cuda, cuda:N"):  # a namespace built by hand
        cli._device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match="no CUDA GPU is available; use --device cpu"):
        cli._device("cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert cli._device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=r"--device cuda:2: this machine has 2 CUDA GPUs \(cuda:0 to cuda:1\)"):
        cli._device("cuda:2")


# ---------------------------------------------------------------------------------------------- reenact inputs


def test_reenact_refuses_a_folder_or_a_still_image_as_a_video(tmp_path, capsys, no_work, media):
    def reenact(*inputs):
        return _run(["reenact", *inputs, "--out", str(tmp_path / "x.mp4"), "--device", "cpu", "--quiet"], capsys)

    photo, video = str(media["photo"]), str(media["video"])
    rc, err = reenact("--reference", photo, "--driving", str(tmp_path))
    assert rc == 2 and f"--driving {tmp_path} is a folder" in err and "video file" in err, err
    rc, err = reenact("--reference", str(tmp_path), "--driving", video)
    assert rc == 2 and f"--reference {tmp_path} is a folder" in err and "image file" in err, err
    rc, err = reenact("--reference", photo, "--driving", photo)
    assert rc == 2 and "--driving" in err and "still image" in err and "video" in err and "--reference" in err, err
    rc, err = reenact("--reference", photo, "--driving", video, "--co-driving", photo)
    assert rc == 2 and "--co-driving" in err and "still image" in err, err
    rc, err = reenact("--reference", photo, "--driving", str(tmp_path / "nope.mp4"))
    assert rc == 2 and "--driving" in err and "not found" in err and "nope.mp4" in err, err


def test_still_image_sniffing(media, tmp_path):
    assert cli._still_image(media["photo"])
    assert not cli._still_image(media["video"]) and not cli._still_image(media["gif"])  # clips stay videos
    (tmp_path / "t.txt").write_text("not a picture")
    assert not cli._still_image(tmp_path / "t.txt")


def test_arguments_that_were_ignored_or_misread(tmp_path, capsys, no_work):
    """Each of these ran (ignoring an argument, or writing a mostly blank picture) or said the wrong thing."""
    rc, err = _run(["demo", "--invert-steps", "5", "--out", str(tmp_path / "d.mp4")], capsys)
    assert rc == 2 and "--invert-steps applies with --checkpoint" in err
    rc, err = _run(["weights", "verify", "bisenet-face-parsing"], capsys)
    assert rc == 2 and "verify checks every cached file and takes no names" in err
    rc, err = _run(["weights"], capsys)
    assert rc == 2 and "required: action (" in err  # names are optional: not said to be required
    rc, err = _run(["generate", "--seeds", "0", "--tiny-resolution", "100", "--out", str(tmp_path / "g.png")], capsys)
    assert rc == 2 and "--tiny-resolution must be a power of two (e.g. 64 or 128), got 100" in err
    rc, _ = _run(["generate", "--seeds", "0-1", "--cols", "4096", "--tiny-resolution", "16", "--quiet",
                  "--out", str(tmp_path / "g.png")], capsys)
    from v2s_nb.images import read_image
    assert rc == 0 and read_image(tmp_path / "g.png").shape == (16, 2 * 16 + 2, 3)  # 2 columns, not 4096


# ----------------------------------------------------------------------------------------------- flag hints


def _weights_error(name, message):
    from v2s_nb.weights import WeightsUnavailableError

    return WeightsUnavailableError(message, name=name, url=None, target=pathlib.Path("/cache") / name)


def test_the_weights_hint_names_the_flag_that_avoids_the_missing_file():
    bisenet = cli.error_line(_weights_error("bisenet-face-parsing", "Could not download bisenet-face-parsing "
                                            "(79999_iter.pth): offline"))
    assert "--regions landmarks" in bisenet and "--checkpoint" not in bisenet and "--encoder" not in bisenet
    encoder = cli.error_line(_weights_error("restyle-e4e-ffhq", "Could not download restyle-e4e-ffhq: offline"))
    assert "leave --encoder out" in encoder and "--checkpoint" not in encoder and "--regions" not in encoder
    generator = cli.error_line(_weights_error("stylegan3-r-ffhq-1024", "Could not download stylegan3-r-ffhq-1024"))
    assert "leave --checkpoint out" in generator and "--regions" not in generator
    detector = cli.error_line(_weights_error("rfb-320-face-detector", "Could not download rfb-320-face-detector"))
    assert "--detector hog" in detector and "--checkpoint" not in detector  # reenact --detector rfb, offline
    pfld = cli.error_line(_weights_error("pfld-68", "Could not download pfld-68"))  # only --detector rfb needs it:
    assert "--detector hog" in pfld and "--pose-from" not in pfld  # pose encoding falls back to its w-space P_r
    strict = cli.error_line(VideoReadError("'d.mp4': ffmpeg reported 1 decoding error(s) ... Re-encode or replace "
                                           "the file (or pass strict=False to only warn)."))
    assert "(or leave out --strict to only warn)" in strict and "strict=False" not in strict
    # no name attribute to go by (or an unknown one): the message tells which file
    e = _weights_error("79999_iter.pth", "bisenet-face-parsing (79999_iter.pth) has no download URL")
    assert "--regions landmarks" in cli.error_line(e)
    e.name = None
    assert "--regions landmarks" in cli.error_line(e)
    other = cli.error_line(_weights_error("net.pkl", "Could not download net.pkl from https://example.com/net.pkl"))
    assert "--checkpoint" in other  # the general hint


def test_no_face_hint_is_said_once_in_the_cli_spelling(tmp_path, capsys, media):
    """The API's hint (detector='cnn' / upsample=2) becomes the CLI's flags; no second hint is appended."""
    from v2s_nb.face import NoFaceError

    blank = tmp_path / "blank.png"
    from PIL import Image
    Image.fromarray(np.full((96, 96, 3), 127, np.uint8)).save(blank)
    rc, err = _run(["reenact", "--reference", str(blank), "--driving", str(media["video"]), "--out",
                    str(tmp_path / "x.mp4"), "--device", "cpu", "--quiet"], capsys)
    assert rc == 2 and err.startswith("error: no face was found in the reference image"), err
    assert err.count("--detector cnn") == 1 and "detector='cnn'" not in err and "upsample=" not in err, err
    assert err.count("\n") == 1
    line = cli.error_line(NoFaceError("no face in any frame of the clip; check the video, or try landmarks(..., "
                                      "detector='cnn', upsample=1) for small or turned faces."))
    assert "try --detector cnn --upsample 1 for small" in line and line.count("--detector") == 1, line
    assert "--detector cnn" in cli.error_line(NoFaceError("no face was found in any frame of x.mp4"))
