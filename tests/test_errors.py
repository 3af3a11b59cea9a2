"""One error base: every exception class of the package is a ``V2SError`` (and still its old built-in), every warning
a ``V2SWarning``, and ``v2s-nb`` prints each exception the package raises as one line, never a traceback."""

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

from v2s_nb import cli
from v2s_nb.errors import CacheWarning, FallbackWarning, V2SError, V2SWarning

PKG = Path(cli.__file__).resolve().parent


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        yield name, path, ast.parse(path.read_text(), filename=str(path))


def _defined_classes():
    """Every exception / warning class defined at module level under v2s_nb/ (AST scan, then imported)."""
    found = {}
    for mod, _, tree in _modules():
        names = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.bases]
        if not names:
            continue
        m = importlib.import_module(mod)
        for n in names:
            obj = getattr(m, n)
            if isinstance(obj, type) and issubclass(obj, BaseException):
                found[f"{mod}.{n}"] = obj
    return found


DEFINED = _defined_classes()


def _raised_builtins():
    """Built-in exception classes named in a ``raise X(...)`` under v2s_nb/ (what main must also print)."""
    import builtins

    out = set()
    for _, _, tree in _modules():
        for node in ast.walk(tree):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                obj = getattr(builtins, node.exc.func.id, None)
                if isinstance(obj, type) and issubclass(obj, Exception):
                    out.add(obj)
    return sorted(out, key=lambda c: c.__name__)


RAISED_BUILTINS = _raised_builtins()


def test_the_scan_finds_the_package_classes():
    # guards the scans themselves: a scan that finds nothing would make the tests below pass vacuously
    names = {k.rsplit(".", 1)[1] for k in DEFINED}
    assert {"NoFaceError", "InversionDivergedError", "SnapshotError", "WeightsChecksumError",
            "CorruptFramesWarning", "V2SError", "V2SWarning"} <= names
    assert {ValueError, KeyError, FileNotFoundError, TypeError} <= set(RAISED_BUILTINS)


@pytest.mark.parametrize("qualname", sorted(DEFINED))
def test_every_class_has_the_common_base(qualname):
    cls = DEFINED[qualname]
    if issubclass(cls, Warning):
        assert issubclass(cls, V2SWarning) and issubclass(cls, UserWarning), f"{qualname} must derive from V2SWarning"
    else:
        assert issubclass(cls, V2SError), f"{qualname} must derive from v2s_nb.errors.V2SError"


def test_classes_keep_their_builtin_base():
    from v2s_nb.face import NoFaceError
    from v2s_nb.method.invert import InversionDivergedError
    from v2s_nb.method.pose_encoding import PoseUnavailableError
    from v2s_nb.stylegan3.snapshot import UnsafePickleError
    from v2s_nb.weights import WeightsUnavailableError

    assert issubclass(NoFaceError, ValueError) and issubclass(UnsafePickleError, ValueError)
    assert issubclass(InversionDivergedError, FloatingPointError)
    assert issubclass(PoseUnavailableError, RuntimeError) and issubclass(WeightsUnavailableError, RuntimeError)
    assert issubclass(CacheWarning, RuntimeWarning) and issubclass(FallbackWarning, RuntimeWarning)


def _instance(cls, msg):
    """An instance of ``cls`` with message ``msg`` (required extra arguments filled with placeholders)."""
    try:
        return cls(msg)
    except TypeError:
        pass
    sig = inspect.signature(cls.__init__)
    args, kwargs = [msg], {}
    for p in list(sig.parameters.values())[2:]:
        if p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.kind == p.KEYWORD_ONLY:
            kwargs[p.name] = None
        else:
            args.append([])
    return cls(*args, **kwargs)


_EXCEPTIONS = [c for c in DEFINED.values() if not issubclass(c, Warning)] + RAISED_BUILTINS


@pytest.mark.parametrize("cls", _EXCEPTIONS, ids=lambda c: c.__name__)
def test_main_prints_one_line(cls, monkeypatch, capsys, tmp_path):
    msg = f"the {cls.__name__} test message\nwith a second line"

    def boom(args):
        raise _instance(cls, msg)

    monkeypatch.setattr(cli, "cmd_generate", boom)
    rc = cli.main(["generate", "--out", str(tmp_path / "x.png"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and f"the {cls.__name__} test message with a second line" in lines[0]
    assert "Traceback" not in err
    # the package's own errors and the input-error built-ins read as errors; only protocol errors raised inside
    # helpers (AttributeError from a module __getattr__) would be a bug if they reached main
    assert ("unexpected" in err) == (cls is AttributeError), err


def test_main_reports_an_unknown_exception_as_a_bug_in_one_line(monkeypatch, capsys, tmp_path):
    class Strange(Exception):
        pass

    def boom(args):
        raise Strange("x")

    monkeypatch.setattr(cli, "cmd_generate", boom)
    assert cli.main(["generate", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unexpected Strange" in err and "report" in err


def test_cli_adds_the_flag_hint(monkeypatch, capsys, tmp_path):
    from v2s_nb.face import NoFaceError

    def boom(args):
        raise NoFaceError("no face was found in the reference image me.png")

    monkeypatch.setattr(cli, "cmd_reenact", boom)  # the subcommand that has --detector
    cli.main(["reenact", "--reference", "me.png", "--driving", "d.mp4", "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err
    assert "--detector cnn" in err and err.startswith("error: no face was found")


def test_keyerror_prints_its_text_without_quotes():
    assert cli.error_line(KeyError("layers [9] are not in the S code")) == \
        "error: layers [9] are not in the S code"


def _cli_flags():
    flags = set()
    parser = cli.build_parser()
    stack = [parser]
    while stack:
        p = stack.pop()
        for a in p._actions:
            flags.update(o for o in a.option_strings if o.startswith("--"))
            if a.choices and isinstance(a.choices, dict):
                stack.extend(a.choices.values())
    flags.discard("--help")
    return flags


def _message_strings(node):
    for sub in ast.walk(node):
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
            yield sub.value


def test_no_method_layer_message_names_a_cli_flag():
    """Messages raised or warned outside cli.py name API arguments; the CLI adds its flags (see _FLAG_HINTS)."""
    flags = _cli_flags()
    assert {"--checkpoint", "--out", "--detector"} <= flags
    pattern = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
    bad = []
    for mod, path, tree in _modules():
        if mod == "v2s_nb.cli":
            continue
        for node in ast.walk(tree):
            is_warn = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                       and node.func.attr == "warn")
            if isinstance(node, ast.Raise) or is_warn:
                for s in _message_strings(node):
                    bad += [f"{path.name}:{node.lineno}: {m}" for m in pattern.findall(s) if m in flags]
    assert not bad, "method-layer messages name CLI flags: " + "; ".join(bad)


@pytest.mark.slow
def test_a_real_error_reaches_the_user_as_one_line(tmp_path):
    # the whole path, in a fresh interpreter: a corrupt snapshot (SnapshotError) through the installed entry point
    bad = tmp_path / "page.pkl"
    bad.write_bytes(b"\x80\x04not a pickle at all")
    r = subprocess.run([sys.executable, "-m", "v2s_nb.cli", "generate", "--network", str(bad), "--out",
                        str(tmp_path / "x.png"), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: "), r.stderr
