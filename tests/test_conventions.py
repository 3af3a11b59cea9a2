"""The conventions table of docs/architecture.md, checked against the code."""

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import v2s_nb

PKG = Path(v2s_nb.__file__).resolve().parent
DOC = PKG.parent / "docs" / "architecture.md"


def _trees(paths=None):
    for path in sorted(paths or PKG.rglob("*.py")):
        yield path, ast.parse(path.read_text(), filename=str(path))


def _parents(tree):
    parent = {}
    for node in ast.walk(tree):
        for child in ast.iter_child_nodes(node):
            parent[child] = node
    return parent


def _dotted(node) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func) + "()"
    return "?"


# ------------------------------------------------------------------------------------------------ atomic writes

#: Calls that write a file (by their dotted name's ending).
_WRITERS = re.compile(r"(^|\.)(np\.save|np\.savez|np\.savez_compressed|numpy\.save|torch\.save|write_text|write_bytes|"
                      r"imwrite|mimwrite|mimsave|imsave|save_file|download_url_to_file|savefig|to_csv|dump)$")
_WRITE_MODE = re.compile(r"[wax+]")

#: Writers that stream into a temporary file themselves and rename it only after checking it (``path: reason``).
_OWN_TEMPORARY = {
    "weights.py": "a download is streamed into <name>.part-* while its SHA-256 is computed, and renamed only once "
                  "size and digest match (clear_cache finds stale .part-* files by that name)",
}


def _is_stream(node, fn_body_names) -> bool:
    """The first argument is an in-memory buffer or the file object a write_atomic callback receives."""
    return isinstance(node, ast.Name) and node.id in fn_body_names


def _buffers(func) -> set:
    """Names bound to io.BytesIO() / io.StringIO() in a function, and lambda / def parameters (stream callbacks)."""
    names = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                and _dotted(node.value.func).endswith(("BytesIO", "StringIO")):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def _writer_calls(paths=None):
    """(file, line, call, verdict) for every call that writes a file under v2s_nb/ (or in ``paths``), verdict 'ok'
    or why not."""
    out = []
    for path, tree in _trees(paths):
        if path.name == "atomic.py":
            continue
        parent = _parents(tree)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            mode = None
            if name in ("open", "os.fdopen", "io.open") or name.endswith(".open"):
                args = node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]
                mode = next((a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)), "r")
                if not _WRITE_MODE.search(mode):
                    continue
            elif name.endswith(".save") and node.args:  # PIL Image.save(target, ...) / obj.save(path)
                pass
            elif not _WRITERS.search(name):
                continue
            # Where does it write?
            anc, through_atomic, buffers = node, False, set()
            while anc in parent:
                anc = parent[anc]
                if isinstance(anc, ast.With) and any(w in _dotted(i.context_expr) for i in anc.items
                                                  for w in ("atomic_path", "write_together")):
                    through_atomic = True
                if isinstance(anc, ast.Call) and _dotted(anc.func).endswith("write_atomic"):
                    through_atomic = True
                if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    buffers |= _buffers(anc)
                    if isinstance(anc, ast.Lambda):
                        buffers |= {a.arg for a in anc.args.args}
            target = node.args[0] if node.args else None
            if name.endswith("torch.save") or name.endswith("np.save") or name.endswith("np.savez"):
                target = node.args[1] if name.endswith("torch.save") and len(node.args) > 1 else target
            if through_atomic or _is_stream(target, buffers):
                verdict = "ok"
            elif name.endswith(".save") and not name.endswith(("np.save", "torch.save")):
                # obj.save(path): a method of ours (Inversion.save, ChannelSets.save, Reenactor.save) is checked
                # where it is defined; a PIL save must go to a stream or an atomic temporary
                verdict = "ok" if not _looks_like_pil(node, tree) else "PIL save outside atomic_path"
            elif path.name in _OWN_TEMPORARY:
                verdict = "ok"
            else:
                verdict = "writes its target directly"
            out.append((path.name if paths else path.relative_to(PKG.parent).as_posix(), node.lineno, name, verdict))
    return out


def _looks_like_pil(node, tree) -> bool:
    return any(k.arg in ("format", "optimize", "quality") for k in node.keywords)


def test_the_writer_scan_sees_the_writers():
    calls = _writer_calls()
    names = {c[2] for c in calls}
    # the scan finds writers of each kind (a scan that matched nothing would pass vacuously)
    assert any(n.endswith("torch.save") for n in names) and any(n.endswith("np.save") for n in names)
    assert any(n.endswith(".save") for n in names) and "os.fdopen" in names


def test_every_writer_goes_through_atomic():
    bad = [f"{f}:{line}: {name} ({why})" for f, line, name, why in _writer_calls() if why != "ok"]
    assert not bad, "writers outside v2s_nb/atomic.py:\n" + "\n".join(bad)


def test_the_scan_would_catch_a_direct_write(tmp_path):
    # the same scan over a module with a plain open(..., "w"), a torch.save(x, path) and a PIL save to a path
    # finds those three, and passes the same calls made through write_atomic / atomic_path / a buffer
    mod = tmp_path / "planted.py"
    mod.write_text("import io, torch\nfrom v2s_nb.atomic import atomic_path, write_atomic\n\n"
                   "def bad(p, x, im):\n    with open(p, 'w') as fh:\n        fh.write('x')\n"
                   "    torch.save(x, p)\n    im.save(p, format='PNG')\n\n"
                   "def good(p, x, im):\n    write_atomic(p, lambda f: torch.save(x, f))\n"
                   "    with atomic_path(p) as tmp:\n        im.save(tmp, format='PNG')\n"
                   "    buf = io.BytesIO()\n    torch.save(x, buf)\n    with open(p) as fh:\n        fh.read()\n")
    found = _writer_calls([mod])
    assert sorted(c[2] for c in found if c[3] != "ok") == ["im.save", "open", "torch.save"]
    assert len([c for c in found if c[3] == "ok"]) == 3


# ------------------------------------------------------------------------------------------------ image convention
#
# Pictures at API boundaries are uint8 RGB channel-last ([H, W, 3] / [N, H, W, 3]); a float picture is channel-last
# in [0, 1]. Generator images are float [N, 3, H, W] in [-1, 1] (what G.synthesis returns): the method layer
# (prepare_images, hence invert / invert_sequence / pivotal_tuning / the encoder) takes them too; every function
# that takes pictures refuses them with the conversion named (v2s_nb.images.to_uint8).


def _pictures(n=2, size=32, seed=0):
    u8 = np.random.RandomState(seed).randint(0, 256, (n, size, size, 3)).astype(np.uint8)
    return u8, u8.astype(np.float32) / 255.0, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _align_face(x):
    from v2s_nb.face import align_face
    from v2s_nb.face.regions import template_landmarks

    return align_face(x[0], template_landmarks(32) * 0.8 + 3, 16).image


def _align_video(x):
    from v2s_nb.face import align_video
    from v2s_nb.face.regions import template_landmarks

    pts = np.repeat((template_landmarks(32) * 0.8 + 3)[None], len(x), 0)
    return align_video(x, pts, 16, progress=False).frames


def _landmarks(x):
    from v2s_nb.face import landmarks

    return landmarks(x, progress=False).found


def _save_image(x, tmp_path):
    from PIL import Image

    from v2s_nb.images import save_image

    return np.asarray(Image.open(save_image(tmp_path / "a.png", x[0])))


def _write_video(x, tmp_path):
    from v2s_nb.video import read_video, write_video

    return read_video(write_video(tmp_path / "a.mp4", x, fps=5)).frames


def _region_parse_input(x):
    from v2s_nb.face.parsing import preprocess

    return preprocess(x, size=32)


def _clip_frames(x):
    from v2s_nb.metrics._common import clip_frames

    return clip_frames(x)


PICTURE_FUNCTIONS = {
    "video.as_rgb_uint8": lambda x, tmp: __import__("v2s_nb.video", fromlist=["x"]).as_rgb_uint8(x),
    "video.Video": lambda x, tmp: __import__("v2s_nb.video", fromlist=["x"]).Video(x, fps=5.0).frames,
    "video.write_video": _write_video,
    "images.image_grid": lambda x, tmp: __import__("v2s_nb.images", fromlist=["x"]).image_grid(x),
    "images.save_image": _save_image,
    "face.align_face": lambda x, tmp: _align_face(x),
    "face.align_video": lambda x, tmp: _align_video(x),
    "face.landmarks": lambda x, tmp: _landmarks(x),
    "face.parsing.preprocess (region_masks' BiSeNet input)": lambda x, tmp: _region_parse_input(x),
    "metrics (clip_frames)": lambda x, tmp: _clip_frames(x),
}


@pytest.mark.parametrize("name", sorted(PICTURE_FUNCTIONS))
def test_picture_functions_take_the_documented_forms(name, tmp_path):
    f = PICTURE_FUNCTIONS[name]
    u8, f01, gen = _pictures()
    ref = f(u8, tmp_path)
    got = f(f01, tmp_path)  # a float picture in [0, 1] is the same picture
    if torch.is_tensor(ref):
        torch.testing.assert_close(got, ref)
    else:
        np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    with pytest.raises(ValueError, match=r"to_uint8|\[0, 1\]"):  # generator images: refused, the fix named
        f(gen, tmp_path)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # a float picture outside [0, 1]: refused, not clipped
        f(f01 * 2.0 - 1.0, tmp_path)


def test_method_layer_takes_pictures_and_generator_images():
    from v2s_nb.method.invert import prepare_images

    u8, f01, gen = _pictures()
    ref = prepare_images(u8, 32)
    assert ref.shape == (2, 3, 32, 32) and ref.dtype == torch.float32 and -1 <= float(ref.min()) < float(ref.max()) <= 1
    torch.testing.assert_close(prepare_images(gen, 32), ref)
    torch.testing.assert_close(prepare_images(f01, 32), ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # channel-last float in [-1, 1]: not silently misread
        prepare_images(f01 * 2.0 - 1.0, 32)


def test_to_uint8_is_the_one_conversion_back():
    from v2s_nb.images import to_uint8

    u8, _, gen = _pictures()
    np.testing.assert_array_equal(to_uint8(gen), u8)


# ------------------------------------------------------------------------------------------------ names, defaults


def test_one_name_per_idea_old_cli_spellings_are_hidden_aliases():
    from v2s_nb.cli import build_parser

    p = build_parser()
    old = p.parse_args(["generate", "--network", "g.pkl", "--trunc", "0.5", "--batch", "2"])
    new = p.parse_args(["generate", "--checkpoint", "g.pkl", "--truncation-psi", "0.5", "--batch-size", "2"])
    assert vars(old) == vars(new) and new.checkpoint == "g.pkl" and new.truncation_psi == 0.5 and new.batch_size == 2
    r = ["reenact", "--reference", "a.png", "--driving", "b.mp4", "--out", "o.mp4"]
    assert vars(p.parse_args(r + ["--network", "x", "--invert-batch", "3", "--batch", "5"])) == \
        vars(p.parse_args(r + ["--checkpoint", "x", "--invert-batch-size", "3", "--batch-size", "5"]))
    sub = p._subparsers._group_actions[0].choices
    for cmd, hidden in (("generate", ["--network", "--trunc ", "--batch "]), ("reenact", ["--network", "--batch "])):
        text = sub[cmd].format_help()
        assert not [h for h in hidden if h in text], text
    assert "--truncation-psi" in sub["generate"].format_help()


def test_the_cli_takes_the_api_defaults():
    import inspect

    from v2s_nb.cli import _resolve_sources, build_parser
    from v2s_nb.method.invert import invert, invert_sequence, pivotal_tuning
    from v2s_nb.method.pose_encoding import encode_pose_sequence

    args = build_parser().parse_args(["reenact", "--reference", "a.png", "--driving", "b.mp4", "--out", "o.mp4"])
    _resolve_sources(args)

    def default(f, name):
        return inspect.signature(inspect.unwrap(f)).parameters[name].default

    assert args.invert_steps == default(invert, "steps") == 500
    assert args.invert_steps_next == default(invert_sequence, "steps_next") == 150
    assert args.invert_batch_size == default(invert_sequence, "batch_size")
    assert (args.pose_steps, args.pose_steps_next) == (default(encode_pose_sequence, "steps_first"),
                                                       default(encode_pose_sequence, "steps_next"))
    assert args.pti_steps == default(pivotal_tuning, "steps")
    given = build_parser().parse_args(["reenact", "--reference", "a.png", "--driving", "b.mp4", "--out", "o.mp4",
                                       "--invert-steps", "7"])
    _resolve_sources(given)
    assert given.invert_steps == 7  # what the user gives wins


def test_old_keyword_names_still_work():
    import warnings

    from v2s_nb.validate import renamed_kwargs

    @renamed_kwargs(batch="batch_size")
    def f(*, batch_size=8):
        return batch_size

    with pytest.warns(DeprecationWarning, match="batch_size"):
        assert f(batch=3) == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(batch_size=4) == 4
    with pytest.raises(TypeError, match="both"):
        f(batch=1, batch_size=2)


def test_one_generator_hash_and_device():
    from v2s_nb.caching import generator_hash
    from v2s_nb.method import invert, local_channels
    from v2s_nb.stylegan3 import tiny_generator

    G = tiny_generator("R", resolution=16)
    assert invert.generator_hash(G) == local_channels.generator_fingerprint(G) == generator_hash(G)
    assert G.device == G.synthesis.device == torch.device("cpu")
    before = generator_hash(G)
    with torch.no_grad():
        G.synthesis.input.freqs += 1  # an in-place change is seen
    assert generator_hash(G) != before
    # so are changes PyTorch doesn't count in the tensors' versions: an edit through .data, a fused Adam step
    before = generator_hash(G)
    G.synthesis.input.freqs.data.mul_(2)
    assert generator_hash(G) != before
    weight = next(G.synthesis.parameters())
    weight.requires_grad_(True)
    try:
        before = generator_hash(G)
        weight.grad = torch.ones_like(weight)
        torch.optim.Adam([weight], lr=0.1, fused=True).step()
        assert generator_hash(G) != before
    finally:
        weight.requires_grad_(False)


def test_the_landmarks_module_and_function_do_not_shadow_each_other():
    import importlib

    from v2s_nb.face import landmarks

    assert callable(landmarks) and landmarks.__module__ == "v2s_nb.face.landmark_detection"
    m = importlib.import_module("v2s_nb.face.landmark_detection")
    assert m.landmarks is landmarks and hasattr(m, "LandmarkTrack")
    with pytest.raises(ModuleNotFoundError):  # no submodule of that name: `import v2s_nb.face.landmarks` is an error,
        importlib.import_module("v2s_nb.face.landmarks")  # never the function one time and the module another
    import v2s_nb.face as face

    assert face.landmarks is landmarks  # trying the import above did not replace the function


def test_progress_bars_come_from_one_helper():
    from v2s_nb.progress import progress_bar, progress_iter

    users = [path.name for path, tree in _trees() for node in ast.walk(tree)
             if isinstance(node, (ast.Import, ast.ImportFrom))
             and any("tqdm" in (a.name or "") for a in node.names) | ("tqdm" in (getattr(node, "module", "") or ""))]
    assert set(users) == {"progress.py"}, f"tqdm imported outside v2s_nb/progress.py: {users}"
    bar = progress_bar(3, "x", enabled=False)
    bar.update(2)
    bar.close()
    assert bar.n == 2 and list(progress_iter(range(3), "x", enabled=False)) == [0, 1, 2]


# ------------------------------------------------------------------------------------------------ the module table


def _module_table():
    """{row key: set of allowed tokens} from the Modules table of docs/architecture.md."""
    text = DOC.read_text()
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        rows[cells[0].strip("`")] = cells[2]
    return rows


def _internal_imports():
    """{module path relative to v2s_nb/: set of imported v2s_nb module paths} (files, e.g. 'face/align.py')."""
    out = {}
    for path, tree in _trees():
        rel = path.relative_to(PKG).as_posix()
        pkg = path.parent.relative_to(PKG).parts
        deps = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = list(pkg[:len(pkg) - (node.level - 1)])
                elif (node.module or "").startswith("v2s_nb"):
                    base = []
                    node = ast.ImportFrom(module=node.module[len("v2s_nb"):].lstrip(".") or None, names=node.names,
                                          level=1)
                else:
                    continue
                mod = base + (node.module.split(".") if node.module else [])
                for a in node.names:
                    cand = mod + [a.name]
                    if (PKG.joinpath(*cand).with_suffix(".py")).is_file() or PKG.joinpath(*cand).is_dir():
                        deps.add("/".join(cand))
                    elif mod:
                        deps.add("/".join(mod))
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("v2s_nb."):
                        deps.add(a.name[len("v2s_nb."):].replace(".", "/"))
        norm = set()
        for d in deps:
            if PKG.joinpath(d).is_dir():
                norm.add(d + "/")
            else:
                norm.add(d + ".py")
        norm.discard(rel)
        out[rel] = norm
    return out


_BASE = {"errors.py", "atomic.py", "validate.py", "weights.py", "caching.py", "progress.py"}


def _row_for(rel, rows):
    """The most specific row of the table for a module path ('face/align.py' -> 'face/')."""
    if rel in rows:
        return rel
    parts = rel.split("/")
    for i in range(len(parts) - 1, 0, -1):
        key = "/".join(parts[:i]) + "/"
        if key in rows:
            return key
    return None


def _allowed(cell: str, rel: str):
    if cell.startswith("everything"):
        return None if "but" not in cell else {"!cli.py"}
    tokens = set(re.findall(r"`([^`]+)`", cell))
    if "base" in tokens:
        tokens = (tokens - {"base"}) | _BASE
    return tokens


def _permitted(dep: str, allowed) -> bool:
    if allowed is None:
        return True
    if allowed == {"!cli.py"}:
        return dep != "cli.py"
    return any(dep == a or (a.endswith("/") and (dep.startswith(a) or dep == a)) for a in allowed)


def test_imports_follow_the_module_table():
    rows = _module_table()
    imports = _internal_imports()
    unlisted = sorted(rel for rel in imports if rel != "__init__.py" and _row_for(rel, rows) is None)
    assert not unlisted, f"modules without a row in docs/architecture.md: {unlisted}"
    stale = sorted(k for k in rows if not PKG.joinpath(k).exists())
    assert not stale, f"rows of docs/architecture.md for modules that do not exist: {stale}"
    bad = []
    for rel, deps in imports.items():
        if rel == "__init__.py":
            continue
        row = _row_for(rel, rows)
        allowed = _allowed(rows[row], rel)
        own = rel.rsplit("/", 1)[0] + "/" if "/" in rel else None  # a subpackage's __init__ re-exports its modules
        bad += [f"{rel} imports {d} (row {row!r} allows {rows[row]})" for d in sorted(deps)
                if not _permitted(d, allowed) and not (rel.endswith("__init__.py") and own and d.startswith(own))]
    assert not bad, "imports that docs/architecture.md does not allow:\n" + "\n".join(bad)


def test_the_module_table_check_would_catch_a_wrong_import():
    rows = _module_table()
    assert not _permitted("method/invert.py", _allowed(rows[_row_for("face/align.py", rows)], "face/align.py"))
    assert not _permitted("cli.py", _allowed(rows["widgets/"], "widgets/tuner.py"))
    assert _permitted("face/align.py", _allowed(rows["method/"], "method/reenact.py"))


def test_every_convention_row_names_a_test_that_exists():
    text = DOC.read_text().split("## Conventions", 1)[1].split("\n## ", 1)[0]
    here = {n.name for n in ast.parse(Path(__file__).read_text()).body if isinstance(n, ast.FunctionDef)}
    errors_tests = PKG.parent / "tests" / "test_errors.py"
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| idea")]
    assert len(rows) >= 10
    for line in rows:
        checked = line.strip().strip("|").split("|")[-1]
        names = re.findall(r"`([^`]+)`", checked)
        assert names, f"convention without a test: {line}"
        for n in names:
            if n.startswith("tests/"):
                assert (PKG.parent / n).is_file(), n
            else:
                assert n in here, f"{n} is not a test in {Path(__file__).name}"
    assert errors_tests.is_file()


def test_cache_entries_are_named_alike_and_unusable_ones_are_redone(tmp_path):
    from v2s_nb.errors import CacheWarning
    from v2s_nb.face import masks_from_landmarks, template_landmarks
    from v2s_nb.method.local_channels import discover
    from v2s_nb.stylegan3 import tiny_generator

    G = tiny_generator("R", 32)
    ws = G.mapping(torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0)), None)
    masks = masks_from_landmarks(np.repeat(template_landmarks(32)[None], 2, 0), 32)
    kw = dict(layers=[G.synthesis.style_names[3]], progress=False, cache=tmp_path)
    first = discover(G, ws, masks, **kw)
    (entry,) = tmp_path.iterdir()
    assert re.fullmatch(r"channels-[0-9a-f]{24}\.json", entry.name), entry.name
    entry.write_text(entry.read_text()[:50])  # truncated
    with pytest.warns(CacheWarning, match=r"cached intermediate .*unreadable.*recomputing"):
        again = discover(G, ws, masks, **kw)
    assert not again.from_cache
    layer = kw["layers"][0]
    np.testing.assert_array_equal(again.scores["eyes"][layer]["iou_pos"], first.scores["eyes"][layer]["iou_pos"])
    assert discover(G, ws, masks, **kw).from_cache  # rewritten whole
