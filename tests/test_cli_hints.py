"""The hints added to caught errors name only flags of the subcommand that ran (cli._FLAG_HINTS, _WEIGHTS_HINTS,
_CLI_SPELLINGS): generate or demo is never told to pass a flag that only reenact has."""

import pathlib
import re
import urllib.error
import urllib.request

import pytest

from v2s_nb import cli
from test_cli_checks import _run

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
TINY_PKL = FIXTURES / "stylegan3_official_tiny" / "r64" / "network.pkl"
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _flags(command) -> set:
    """The options of ``command``, read from its own argparse parser."""
    return set(cli.build_parser()._subparsers._group_actions[0].choices[command]._option_string_actions)


def _error_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network (every download fails as offline) and an empty weights cache."""
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------- real errors, real runs


@pytest.mark.parametrize("command", ["generate", "demo"])
def test_a_failed_download_is_not_told_to_leave_out_an_encoder_the_command_lacks(tmp_path, capsys, offline,
                                                                                  command):
    out = tmp_path / ("g.png" if command == "generate" else "d.mp4")
    rc, err = _run([command, "--checkpoint", "https://example.invalid/net.pkl", "--out", str(out), "--device",
                    "cpu", "--quiet"] + (["--frames", "2"] if command == "demo" else []), capsys)
    line = _error_line(err)
    assert rc == 2 and "Could not download net.pkl" in line, err
    assert "leave --checkpoint out" in line and "--encoder" not in line, line
    assert set(_FLAG.findall(line)) <= _flags(command), line


def _nan_generator(path):
    """A tiny generator whose mapping overflows to inf (every image NaN); its stored weights are all finite."""
    import torch

    from v2s_nb.stylegan3 import tiny_generator
    from v2s_nb.stylegan3.checkpoint import save_generator

    G = tiny_generator("R", resolution=16)
    with torch.no_grad():
        for name in ("fc0", "fc1"):
            getattr(G.mapping, name).weight.mul_(1e34)
    return save_generator(G, path)


def test_generate_with_a_broken_generator_is_not_told_to_check_videos(tmp_path, capsys):
    net = _nan_generator(tmp_path / "nan.safetensors")
    rc, err = _run(["generate", "--checkpoint", str(net), "--seeds", "0", "--out", str(tmp_path / "g.png"),
                    "--device", "cpu", "--quiet"], capsys)
    line = _error_line(err)
    assert rc == 2 and "NaN" in line, err
    assert not _FLAG.findall(line), line  # FrameFormatError's hint is about --driving / --co-driving, reenact's
    assert not (tmp_path / "g.png").exists()


def test_demo_with_an_unreadable_input_is_not_told_to_check_reference(tmp_path, capsys):
    inputs = tmp_path / "d_inputs"  # the demo keeps an existing photo there and gives it to reenact
    inputs.mkdir()
    (inputs / "astronaut.png").write_bytes(b"")
    rc, err = _run(["demo", "--checkpoint", str(TINY_PKL), "--frames", "2", "--invert-steps", "1",
                    "--invert-steps-next", "1", "--out", str(tmp_path / "d.mp4"), "--device", "cpu", "--quiet"],
                   capsys)
    line = _error_line(err)
    assert rc == 2 and "astronaut.png is an empty file" in line, err
    assert "--reference" not in line and set(_FLAG.findall(line)) <= _flags("demo"), line


@pytest.mark.slow
def test_demo_whose_inversion_diverges_keeps_only_the_device_hint(tmp_path, capsys):
    net = _nan_generator(tmp_path / "nan.safetensors")
    rc, err = _run(["demo", "--checkpoint", str(net), "--frames", "2", "--invert-steps", "2", "--invert-steps-next",
                    "1", "--out", str(tmp_path / "d.mp4"), "--device", "cpu", "--quiet"], capsys)
    line = _error_line(err)
    assert rc == 2 and "inversion diverged" in line, err
    assert line.endswith("(on a GPU, try --device cpu)") and "--reference" not in line, line


# ------------------------------------------------------------------------------- every hint, every subcommand


_ARGV = {"generate": ["generate", "--out", "g.png"], "reenact": ["reenact", "--reference", "a.png", "--driving",
                                                                 "b.mp4", "--out", "o.mp4"],
         "demo": ["demo"], "weights": ["weights", "verify"]}


def _errors():
    """One error per hint: a class named after each _FLAG_HINTS key (the lookup goes by name), the weights hints
    by file name, and the demo's NoFaceError in the API's spelling (``detector='cnn'``)."""
    from v2s_nb.face import NoFaceError
    from v2s_nb.weights import WeightsUnavailableError

    out = [(name, lambda name=name: type(name, (ValueError,), {})(f"a {name}")) for name in cli._FLAG_HINTS]
    for key in list(cli._WEIGHTS_HINTS) + ["net.pkl"]:
        out.append((f"weights:{key}", lambda key=key: WeightsUnavailableError(
            f"Could not download {key}: offline", name=key, url=None, target=pathlib.Path("/cache") / key)))
    out.append(("spelling", lambda: NoFaceError("no face was found in the demo photo by dlib's hog detector at "
                                                "upsample 0; pass upsample=1 (or detector='cnn')")))
    return out


@pytest.mark.parametrize("command", list(_ARGV))
@pytest.mark.parametrize("label, make", _errors(), ids=[label for label, _ in _errors()])
def test_every_hint_names_only_flags_of_the_running_subcommand(monkeypatch, capsys, command, label, make):
    def boom(args):
        raise make()

    monkeypatch.setattr(cli, f"cmd_{command}", boom)
    rc, err = _run(_ARGV[command], capsys)
    line = _error_line(err)
    named = set(_FLAG.findall(line))
    assert rc == 2 and named <= _flags(command), f"{command}: {line}"
    if command == "reenact":  # it has every flag the hints name: each is still said
        assert named, line
    if label == "spelling":
        assert ("detector='cnn'" in line) == (command != "reenact"), line  # kept where no flag replaces it


def test_the_flags_are_read_from_the_parser(monkeypatch, capsys, tmp_path):
    """A subcommand given --detector / --upsample (a parser change, no other edit) gets the NoFaceError hint."""
    from v2s_nb.face import NoFaceError

    def boom(args):
        raise NoFaceError("no face was found in the reference image me.png")

    build = cli.build_parser

    def build_with_detector():
        p = build()
        g = p._subparsers._group_actions[0].choices["generate"]
        g.add_argument("--detector")
        g.add_argument("--upsample")
        return p

    monkeypatch.setattr(cli, "cmd_generate", boom)
    rc, err = _run(["generate", "--out", str(tmp_path / "x.png")], capsys)
    assert rc == 2 and "--detector" not in err, err
    monkeypatch.setattr(cli, "build_parser", build_with_detector)
    rc, err = _run(["generate", "--out", str(tmp_path / "x.png")], capsys)
    assert rc == 2 and "(try --detector cnn, --detector rfb or --upsample 2)" in err, err


def test_warnings_are_printed_as_one_line_once():
    """Python's form printed the package's file and a line of its source; one warning raised from several places
    came several times (--zeta 2 gave the same CoefficientWarning 4 times). In a new process: pytest records
    warnings instead of printing them."""
    import subprocess
    import sys

    script = """if True:
        import warnings
        from v2s_nb import cli
        from v2s_nb.method.reenact import CoefficientWarning

        def warns(args):
            for level in (1, 2):
                warnings.warn("zeta = 2 is outside [0, 1]", CoefficientWarning, stacklevel=level)
            warnings.warn("a library's own", UserWarning)
            return 0

        parser = cli.build_parser()
        parser._subparsers._group_actions[0].choices["generate"].set_defaults(func=warns)
        cli.build_parser = lambda: parser
        assert cli.main(["generate", "--seeds", "0"]) == 0
        assert warnings.formatwarning.__module__ == "warnings"  # put back
    """
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stderr == "warning: zeta = 2 is outside [0, 1]\nwarning (UserWarning): a library's own\n"
