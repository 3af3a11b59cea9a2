"""Pretrained weights: download on first use, verify, and cache.

The main entry point is :func:`fetch`, which turns a *short name* from :data:`KNOWN_FILES`
(``"stylegan3-r-ffhq-1024"``), an ``http(s)://`` URL, a ``file://`` URL or a local path into a
local :class:`pathlib.Path`::

    from v2s_nb.weights import fetch
    pkl = fetch("stylegan3-r-ffhqu-256")      # downloads once, then served from the cache

Cache location (see :func:`cache_dir`): ``$V2S_NB_CACHE`` if set, else
``$XDG_CACHE_HOME/v2s_nb``, else ``~/.cache/v2s_nb``.

Pre-downloaded weights (offline machines, shared lab folders, CI): folders named in
``$V2S_NB_WEIGHTS_DIR`` (separated by ``os.pathsep``) are searched for a known file's file name
before the cache; a file found there is used in place, after the same size / SHA-256 check as a
download (see :func:`weights_dirs`).

Guarantees
----------
* A file only ever appears under its final name after it was received completely and, where a
  size (bytes) and/or SHA-256 is known, after both matched.  Downloads stream into
  ``<filename>.part-<random>`` in the same directory and are moved into place with
  :func:`os.replace` (atomic on POSIX and Windows when source and target share a file system).
* Without a pinned SHA-256, what arrived must also pass :func:`sniff_weights` (not an HTML / JSON page,
  a pickle that ends with its STOP opcode, a zip archive with its end record, a safetensors file whose
  header matches its size) before the rename, and a cached copy is sniffed again before reuse: a
  poisoned or truncated cache entry is downloaded again, never reused.
* A download ends with :class:`WeightsUnavailableError` past :data:`DEADLINE_S` or when the server sends
  less than :data:`MIN_RATE_BPS` over :data:`RATE_WINDOW_S`.  The ``.part`` file is removed on any exit
  (errors, Ctrl-C, SIGTERM); one left by a SIGKILL is removed by the next download of that file.
* ``fetch(..., force=True)`` downloads again; ``fetch(..., download=False)`` only looks on this machine;
  :func:`verify_cache` / :func:`clear_cache` (``v2s-nb weights verify | clear``) check and empty the cache.
* A cached file's SHA-256 is remembered in a ``<file>.sha256.json`` sidecar and trusted while the file's size
  and mtime are unchanged (rehashing a 300 MB pickle on every use costs about a second). Files under
  :data:`REHASH_BELOW_BYTES` are rehashed on every use; for larger ones, bytes changed in place with the
  mtime kept (``tar``, ``rsync -a``, ``cp -p`` of a damaged copy, bit rot) go unnoticed until
  :func:`verify_cache` (``v2s-nb weights verify``), which rehashes everything.
* Network trouble (offline, DNS, refused connection, HTTP error status, timeout, connection cut
  mid-transfer) raises :class:`WeightsUnavailableError`, whose message names the file, its URL and
  the exact path where the file can be put by hand.
* Content that arrived completely but does not match the expected size / SHA-256 raises
  :class:`WeightsChecksumError` with the expected and the received values.
* Entries whose SHA-256 is not known (``None``) are still downloaded; the SHA-256 of what was
  received is computed and reported once per file through :func:`warnings.warn`
  (:class:`UnverifiedWeightsWarning`).  No hash in this module was made up: every value that is not
  ``None`` was taken from public sources listed next to it.

Only the standard library (``urllib``) and ``tqdm`` are used.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import pathlib
import re
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from .atomic import write_atomic
from .errors import CacheWarning, V2SError, V2SWarning

__all__ = [
    "KnownFile",
    "KNOWN_FILES",
    "WeightsUnavailableError",
    "WeightsChecksumError",
    "UnverifiedWeightsWarning",
    "cache_dir",
    "cache_path",
    "fetch",
    "weights_dirs",
    "sha256_file",
    "sniff_weights",
    "verify_cache",
    "clear_cache",
]

#: Read / write block size for hashing and downloading, in bytes (1 MiB).
CHUNK_BYTES = 1 << 20
#: Socket timeout for connecting and for each read of a download, in seconds.
TIMEOUT_S = 60.0
#: Overall deadline of one download, in seconds (4 h: a 380 MB snapshot at 27 kB/s).
DEADLINE_S = 4 * 3600.0
#: Minimum transfer rate, in bytes per second, averaged over :data:`RATE_WINDOW_S`: a server trickling bytes
#: slower than this is given up on (each read alone would never time out).
MIN_RATE_BPS = 10 * 1024
#: Window of the minimum-rate check, in seconds.
RATE_WINDOW_S = 60.0
#: Leftover ``<file>.part-*`` downloads (from a killed process) older than this, in seconds, are removed.
STALE_PART_S = 600.0
#: Cached files smaller than this, in bytes, are rehashed on every use instead of trusting their sidecar record
#: (8 MiB: a few milliseconds); larger ones keep the record while size and mtime match (see :func:`_cached_digest`).
REHASH_BELOW_BYTES = 8 << 20
#: ``User-Agent`` header sent with downloads (some hosts reject urllib's default).
USER_AGENT = "v2s_nb-weights/0.1 (+python-urllib)"

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


# ---------------------------------------------------------------------------------------------
# Errors / warnings
# ---------------------------------------------------------------------------------------------


class WeightsUnavailableError(V2SError, RuntimeError):
    """The file could not be obtained (offline, HTTP error, interrupted transfer, no URL known).

    Attributes: ``name`` (short name or file name), ``url`` (``str`` or ``None``), ``target``
    (the :class:`pathlib.Path` where a hand-downloaded copy is picked up).
    """

    def __init__(self, message: str, *, name: str, url: str | None, target: pathlib.Path):
        super().__init__(message)
        self.name = name
        self.url = url
        self.target = target


class WeightsChecksumError(V2SError, RuntimeError):
    """A file was received (or found) but its size or SHA-256 differs from the expected one.

    Attributes: ``name``, ``url``, ``path`` (the offending file; already deleted when it was a
    download), ``kind`` (``"size"`` or ``"sha256"``), ``expected`` and ``got``.
    """

    def __init__(self, message: str, *, name: str, url: str | None, path: pathlib.Path,
                 kind: str, expected: object, got: object):
        super().__init__(message)
        self.name = name
        self.url = url
        self.path = path
        self.kind = kind
        self.expected = expected
        self.got = got


class UnverifiedWeightsWarning(V2SWarning):
    """Issued (once per file and process) when a file is used whose SHA-256 is not pinned."""


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownFile:
    """One downloadable file known by short name.

    Attributes
    ----------
    name : str
        Short name used with :func:`fetch`, e.g. ``"stylegan3-r-ffhq-1024"``.
    url : str or None
        Direct ``https://`` download URL; ``None`` when no stable direct URL is known (the file
        must then be placed in the cache by hand, see :func:`cache_path`).
    filename : str
        File name inside the cache directory.
    size : int or None
        Exact size in bytes, or ``None`` when not verified.
    sha256 : str or None
        Lower-case hex SHA-256 (64 characters) of the file, or ``None`` when not verified.
    description : str
        Human-readable description (what the file is, where else to get it).
    homepage : str or None
        Page describing the file / offering a manual download (informational only).
    """

    name: str
    url: str | None
    filename: str
    size: int | None
    sha256: str | None
    description: str
    homepage: str | None = None


_NGC_STYLEGAN3 = "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/"
_NGC_STYLEGAN3_PAGE = "https://catalog.ngc.nvidia.com/orgs/nvidia/teams/research/models/stylegan3"

# Released StyleGAN3 snapshots (NVlabs/stylegan3 README, "Pretrained networks"): 12 files.
# (dataset, resolution in pixels, description of the training data)
_STYLEGAN3_RELEASES: tuple[tuple[str, int, str], ...] = (
    ("ffhq", 1024, "FFHQ, aligned faces"),
    ("ffhqu", 1024, "FFHQ-U, unaligned faces"),
    ("ffhqu", 256, "FFHQ-U, unaligned faces"),
    ("metfaces", 1024, "MetFaces, aligned faces from art"),
    ("metfacesu", 1024, "MetFaces-U, unaligned faces from art"),
    ("afhqv2", 512, "AFHQv2, animal faces (cats, dogs, wild)"),
)
_STYLEGAN3_CONFIGS = {"t": "StyleGAN3-T (translation equivariant)",
                      "r": "StyleGAN3-R (translation and rotation equivariant)"}

# Size / SHA-256 of the StyleGAN3 pickles: no published or independently repeated value was found
# in the public sources searched, so they are None (never guessed).
# fetch() then reports the SHA-256 of what it downloaded; pin it here once checked.
_STYLEGAN3_PINS: dict[str, tuple[int | None, str | None]] = {}


def _stylegan3_entries() -> dict[str, KnownFile]:
    out: dict[str, KnownFile] = {}
    for cfg, cfg_desc in _STYLEGAN3_CONFIGS.items():
        for dataset, res, data_desc in _STYLEGAN3_RELEASES:
            name = f"stylegan3-{cfg}-{dataset}-{res}"
            filename = f"stylegan3-{cfg}-{dataset}-{res}x{res}.pkl"
            size, sha = _STYLEGAN3_PINS.get(name, (None, None))
            out[name] = KnownFile(
                name=name,
                url=_NGC_STYLEGAN3 + filename,
                filename=filename,
                size=size,
                sha256=sha,
                description=(f"NVIDIA {cfg_desc} generator snapshot, {data_desc}, "
                             f"{res}x{res} pixels (official NVIDIA NGC release; see the NVlabs/stylegan3 license)."),
                homepage=_NGC_STYLEGAN3_PAGE,
            )
    return out


# BiSeNet face parser from zllrunning/face-parsing.PyTorch (MIT). Upstream hosts it only on Google
# Drive (README link https://drive.google.com/open?id=1eFSwZoSfVVroAy7LiGYybW6F8ErshoZW), which has
# no stable direct URL.  Size and SHA-256 below are repeated identically by several independent
# public sources (clibdev/face-parsing.PyTorch release table; model lock files that pin the official
# Drive file and the Hugging Face mirrors vivym/face-parsing-bisenet,
# ManyOtherFunctions/face-parse-bisent, afrizalha/musetalk-models as byte-identical; the Hugging Face
# LFS object id of the mirrored file).  Because the hash is pinned, the Hugging Face mirror is used as
# the download URL: a changed or tampered mirror fails verification instead of being accepted.
_BISENET = KnownFile(
    name="bisenet-face-parsing",
    url="https://huggingface.co/vivym/face-parsing-bisenet/resolve/main/79999_iter.pth",
    filename="79999_iter.pth",
    size=53_289_463,
    sha256="468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567",
    description=("BiSeNet face-parsing checkpoint (19 CelebAMask-HQ classes, ResNet-18 backbone), "
                 "79999_iter.pth from zllrunning/face-parsing.PyTorch (MIT). Downloaded from a "
                 "Hugging Face mirror and checked against the pinned SHA-256; the official copy is "
                 "on Google Drive: https://drive.google.com/open?id=1eFSwZoSfVVroAy7LiGYybW6F8ErshoZW"),
    homepage="https://github.com/zllrunning/face-parsing.PyTorch",
)

# The face detector and 68-point landmark CNN that the paper cites for its pose regressor and keypoint metric
# (cunjian/pytorch_face_landmark, commit 6f34bf9). That repository has no licence file, so the files are never
# shipped: downloaded from upstream, pinned to the commit and to these sizes / SHA-256 (computed here on
# the files at that commit).
_CUNJIAN = "https://raw.githubusercontent.com/cunjian/pytorch_face_landmark/6f34bf9/"
_CUNJIAN_PAGE = "https://github.com/cunjian/pytorch_face_landmark"
_PFLD = KnownFile(
    name="pfld-68",
    url=_CUNJIAN + "onnx/pfld.onnx",
    filename="pfld.onnx",
    size=2_987_921,
    sha256="7d7bbd5c6a1d9272e58d9773898284a1905d872eba9a662df9b5f20f1ba6f83e",
    description=("PFLD 68-point facial landmark regressor (ONNX, input [N,3,112,112] RGB in [0,1], output "
                 "[N,136] crop-relative (x, y) in dlib order), from cunjian/pytorch_face_landmark (no licence "
                 "file upstream: downloaded, never redistributed)."),
    homepage=_CUNJIAN_PAGE,
)
_RFB320 = KnownFile(
    name="rfb-320-face-detector",
    url=_CUNJIAN + "models/onnx/version-RFB-320.onnx",
    filename="version-RFB-320.onnx",
    size=1_270_727,
    sha256="34cd7e60aeff28744c657de7a3dc64e872d506741de66987f3426f2b79f88017",
    description=("Ultra-Light-Fast-Generic-Face-Detector RFB-320 (ONNX, input [1,3,240,320] (RGB-127)/128, "
                 "output scores [1,K,2] and corner boxes [1,K,4] in [0,1]), as copied in "
                 "cunjian/pytorch_face_landmark."),
    homepage=_CUNJIAN_PAGE,
)

# ReStyle encoders for StyleGAN3 released with yuval-alaluf/stylegan3-editing (README, "StyleGAN3 Encoder"), trained on
# FFHQ over the aligned StyleGAN3-R FFHQ 1024 generator (their converted sg3-r-ffhq-1024.pt); each file also holds
# that generator as 'decoder.*' tensors. Hosted only on Google Drive (no stable direct URL: url None, the Drive page
# is the homepage for a manual download into the cache or V2S_NB_WEIGHTS_DIR). No public size / SHA-256 was found.
_RESTYLE_PSP = KnownFile(
    name="restyle-psp-ffhq",
    url=None,
    filename="restyle_pSp_ffhq.pt",
    size=None,
    sha256=None,
    description=("ReStyle-pSp encoder (IR-SE-50, 6-channel input) for the StyleGAN3-R FFHQ 1024 generator, from "
                 "yuval-alaluf/stylegan3-editing; Google Drive file id 12WZi2a9ORVg-j6d9x4eF-CKpLaURC2W-."),
    homepage="https://drive.google.com/file/d/12WZi2a9ORVg-j6d9x4eF-CKpLaURC2W-/view?usp=sharing",
)
_RESTYLE_E4E = KnownFile(
    name="restyle-e4e-ffhq",
    url=None,
    filename="restyle_e4e_ffhq.pt",
    size=None,
    sha256=None,
    description=("ReStyle-e4e encoder (IR-SE-50, 6-channel input) for the StyleGAN3-R FFHQ 1024 generator, from "
                 "yuval-alaluf/stylegan3-editing; Google Drive file id 1z_cB187QOc6aqVBdLvYvBjoc93-_EuRm."),
    homepage="https://drive.google.com/file/d/1z_cB187QOc6aqVBdLvYvBjoc93-_EuRm/view",
)

#: Registry of known files by short name.
KNOWN_FILES: dict[str, KnownFile] = {**_stylegan3_entries(), _BISENET.name: _BISENET, _PFLD.name: _PFLD,
                                     _RFB320.name: _RFB320, _RESTYLE_PSP.name: _RESTYLE_PSP,
                                     _RESTYLE_E4E.name: _RESTYLE_E4E}


# ---------------------------------------------------------------------------------------------
# Paths / hashing
# ---------------------------------------------------------------------------------------------


def cache_dir() -> pathlib.Path:
    """Directory where downloaded weights are kept (not created here).

    ``$V2S_NB_CACHE`` if set and non-empty; else ``$XDG_CACHE_HOME/v2s_nb`` if
    ``XDG_CACHE_HOME`` is set and non-empty; else ``~/.cache/v2s_nb``.  ``~`` is expanded.
    """
    env = os.environ.get("V2S_NB_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return pathlib.Path(xdg).expanduser() / "v2s_nb"
    return pathlib.Path.home() / ".cache" / "v2s_nb"


def weights_dirs() -> list[pathlib.Path]:
    """Folders of pre-downloaded weights searched before the cache: ``$V2S_NB_WEIGHTS_DIR``, split on
    ``os.pathsep`` (``:`` on POSIX), empty entries and missing folders skipped. Files in them are
    never written to or deleted; a file that fails its size / SHA-256 check is passed over with a warning.
    """
    env = os.environ.get("V2S_NB_WEIGHTS_DIR", "")
    return [pathlib.Path(d).expanduser() for d in env.split(os.pathsep) if d and pathlib.Path(d).expanduser().is_dir()]


def _from_weights_dirs(kf: "KnownFile", *, size: int | None, sha256: str | None) -> pathlib.Path | None:
    """The first copy of ``kf`` in :func:`weights_dirs` that passes the size / SHA-256 check, or None."""
    for d in weights_dirs():
        path = d / kf.filename
        if not path.is_file():
            continue
        try:
            _check_file(path, label=kf.name, url=None, size=size, sha256=sha256, sidecar=False)
            if sha256 is None:  # unpinned: at least a whole file of its kind
                _check_format(path, label=kf.name, url=None, where="")
        except WeightsChecksumError as e:
            warnings.warn(f"{e} Ignoring this copy (found through V2S_NB_WEIGHTS_DIR).", CacheWarning,
                          stacklevel=3)
            continue
        if sha256 is None and kf.name not in _warned_unverified:  # (said once a process: no hashing after)
            _warn_unverified(kf.name, path, sha256_file(path), path.stat().st_size)
        return path
    return None


def sha256_file(path: str | os.PathLike, *, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Lower-case hex SHA-256 of a file, read in blocks of ``chunk_bytes`` bytes (default 1 MiB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_bytes)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def _url_filename(url: str) -> str:
    """Last path component of a URL, made safe as a file name (``"download"`` if empty)."""
    base = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    base = re.sub(r"[^A-Za-z0-9._+-]", "_", base).lstrip(".")
    return base or "download"


def cache_path(name_or_url: str, *, cache: str | os.PathLike | None = None) -> pathlib.Path:
    """Path where :func:`fetch` keeps (and looks for) a short name or an http(s) URL.

    Known short names (and URLs equal to a known file's URL) map to ``<cache>/<filename>``.  Other
    URLs map to ``<cache>/url/<first 16 hex of sha256(url)>/<last URL path component>`` so that
    different URLs ending in the same file name do not collide.
    """
    root = pathlib.Path(cache).expanduser() if cache is not None else cache_dir()
    kf = _lookup_known(name_or_url)
    if kf is not None:
        return root / kf.filename
    if _is_http(name_or_url):
        tag = hashlib.sha256(name_or_url.encode("utf-8")).hexdigest()[:16]
        return root / "url" / tag / _url_filename(name_or_url)
    raise KeyError(f"{name_or_url!r} is neither a known weight name nor an http(s) URL")


def _is_http(s: str) -> bool:
    return urllib.parse.urlsplit(s).scheme.lower() in ("http", "https")


def _lookup_known(s: str) -> KnownFile | None:
    if s in KNOWN_FILES:
        return KNOWN_FILES[s]
    for kf in KNOWN_FILES.values():
        if kf.url is not None and kf.url == s:
            return kf
    return None


# ---------------------------------------------------------------------------------------------
# Verification helpers
# ---------------------------------------------------------------------------------------------

_warned_unverified: set[str] = set()


def _warn_unverified(label: str, path: pathlib.Path, digest: str, size: int) -> None:
    if label in _warned_unverified:
        return
    _warned_unverified.add(label)
    warnings.warn(
        f"{label}: no SHA-256 is pinned for this file, so its content was NOT verified. "
        f"{path} has {size} bytes and SHA-256 {digest}. Compare it with a trusted source and pin it "
        f"(KnownFile.sha256 in v2s_nb/weights.py, or fetch(..., sha256=...)).",
        UnverifiedWeightsWarning,
        stacklevel=3,
    )


def _check_format(path: pathlib.Path, *, label: str, url: str | None, where: str) -> None:
    """WeightsChecksumError (kind 'format') where :func:`sniff_weights` finds ``path`` unusable; ``where`` prefixes
    the path in the message (e.g. 'the cached ')."""
    bad = sniff_weights(path)
    if bad:
        raise WeightsChecksumError(f"{label}: {where}{path} is unusable: {bad}.", name=label, url=url, path=path,
                                   kind="format", expected="weights", got=bad)


def _sidecar(path: pathlib.Path) -> pathlib.Path:
    return path.with_name(path.name + ".sha256.json")


def _cached_digest(path: pathlib.Path) -> str:
    """SHA-256 of ``path``, reusing a sidecar record when size and mtime (ns) are unchanged.

    Hashing a 300 MB pickle takes about a second, so each verified file of at least
    :data:`REHASH_BELOW_BYTES` gets a small ``<file>.sha256.json`` next to it recording the digest it had at
    a given (size, mtime). The record cannot see bytes changed in place with size and mtime kept (a damaged
    copy restored by ``tar`` / ``rsync -a`` / ``cp -p``, bit rot): :func:`verify_cache` rehashes every file
    and finds those. Smaller files are simply rehashed each time.
    """
    st = path.stat()
    if st.st_size < REHASH_BELOW_BYTES:  # cheap enough to never trust a record
        return sha256_file(path)
    side = _sidecar(path)
    try:
        rec = json.loads(side.read_text())
        if rec.get("size") == st.st_size and rec.get("mtime_ns") == st.st_mtime_ns:
            digest = str(rec["sha256"])
            if _SHA256_RE.match(digest):
                return digest
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(path)
    _write_sidecar(path, digest)
    return digest


def _write_sidecar(path: pathlib.Path, digest: str) -> None:
    try:
        st = path.stat()
        text = json.dumps({"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        write_atomic(_sidecar(path), lambda f: f.write(text.encode()))
    except OSError:  # read-only cache etc.: the sidecar is only an optimisation
        pass


def _norm_sha(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    s = sha256.strip().lower()
    if not _SHA256_RE.match(s):
        raise ValueError(f"sha256 must be 64 hex characters, got {sha256!r}")
    return s


def _check_file(path: pathlib.Path, *, label: str, url: str | None, size: int | None,
                sha256: str | None, sidecar: bool = True) -> None:
    """Raise :class:`WeightsChecksumError` if ``path`` does not have ``size`` bytes / ``sha256``.

    ``sidecar=False`` hashes without reading or writing a ``.sha256.json`` record (used for the
    user's own files outside the cache).
    """
    got_size = path.stat().st_size
    if size is not None and got_size != size:
        raise WeightsChecksumError(
            f"{label}: size mismatch for {path}: expected {size} bytes, got {got_size} bytes.",
            name=label, url=url, path=path, kind="size", expected=size, got=got_size)
    if sha256 is not None:
        got = _cached_digest(path) if sidecar else sha256_file(path)
        if got != sha256:
            raise WeightsChecksumError(
                f"{label}: SHA-256 mismatch for {path}: expected {sha256}, got {got}.",
                name=label, url=url, path=path, kind="sha256", expected=sha256, got=got)


def _describe(label: str, target: pathlib.Path) -> str:
    return label if label == target.name else f"{label} ({target.name})"


def _manual_hint(label: str, url: str | None, target: pathlib.Path, extra: str | None) -> str:
    if url and extra:
        src = f"download it from {url} (see also {extra})"
    elif url or extra:
        src = f"download it from {url or extra}"
    else:
        src = "obtain it"
    return (f"To install it by hand, {src} and save it exactly as:\n    {target}\n"
            f"(the cache directory can be changed with the V2S_NB_CACHE environment variable).")


# ---------------------------------------------------------------------------------------------
# Format sniffing: what a file that arrived (or sits in the cache) looks like
# ---------------------------------------------------------------------------------------------

_TAIL_BYTES = 1 << 16


def sniff_weights(path: str | os.PathLike, filename: str | None = None) -> str | None:
    """What is wrong with a weight file judged from its first and last bytes, or ``None`` when it looks right.

    Refused whatever the extension: an empty file, an HTML / XML page, a JSON document (an error page of an
    API). By extension (``filename``, default the path's name): ``.pkl`` must be a complete pickle (protocol
    header, STOP opcode as last byte); ``.pth`` / ``.pt`` a complete zip archive (end-of-central-directory
    record present) or a pickle; ``.safetensors`` a header whose tensors' data fits the file exactly;
    ``.zip`` a complete zip archive. Reads at most 128 KiB.
    """
    path = pathlib.Path(path)
    name = (filename or path.name).lower()
    size = path.stat().st_size
    if size == 0:
        return "the file is empty"
    with open(path, "rb") as f:
        head = f.read(4096)
        f.seek(max(0, size - _TAIL_BYTES))
        tail = f.read()
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")) or b"<html" in low[:512]:
        return "it is an HTML / XML page, not weights (an error or login page served with status 200?)"
    if low[:1] in (b"{", b"[") and not name.endswith(".safetensors") and size < (1 << 20):
        try:
            json.loads(path.read_bytes())
            return "it is a JSON document, not weights (an API error message?)"
        except ValueError:
            pass
    ext = name.rsplit(".", 1)[-1] if "." in name else ""
    is_zip = head.startswith(b"PK\x03\x04")
    if ext == "pkl" or (ext in ("pth", "pt") and not is_zip):
        if not head.startswith(b"\x80"):
            return "it is not a pickle (no protocol header)"
        if ext == "pkl" and not tail.endswith(b"."):
            return "the pickle is truncated (it does not end with the STOP opcode)"
    if ext in ("pth", "pt", "zip") and (is_zip or ext == "zip"):
        if not is_zip:
            return "it is not a zip archive"
        if b"PK\x05\x06" not in tail[-(_TAIL_BYTES):]:
            return "the zip archive is truncated (no end-of-central-directory record)"
    if ext == "safetensors":
        n = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
        if not (0 < n < 100_000_000) or head[8:9] != b"{" or 8 + n > size:
            return "it is not a complete safetensors file (bad header)"
        with open(path, "rb") as f:
            f.seek(8)
            try:
                header = json.loads(f.read(n))
                end = max([int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"] or [0])
            except (ValueError, KeyError, TypeError, IndexError):
                return "it is not a complete safetensors file (unreadable header)"
        if 8 + n + end != size:
            return f"the safetensors file is truncated or padded ({size} bytes, its header says {8 + n + end})"
    return None


def _remove_stale_parts(target: pathlib.Path) -> None:
    """Remove ``<target>.part-*`` files left by a killed process (untouched for :data:`STALE_PART_S`)."""
    import time

    try:
        for p in target.parent.glob(glob_escape(target.name) + ".part-*"):
            try:
                if time.time() - p.stat().st_mtime > STALE_PART_S:
                    p.unlink()
            except OSError:
                pass
    except OSError:
        pass


def glob_escape(name: str) -> str:
    import glob

    return glob.escape(name)


class _TerminateToException:
    """While active (main thread only), SIGTERM raises ``SystemExit(143)`` so that ``finally`` blocks run and
    remove partial files; the previous handler is restored afterwards."""

    def __enter__(self):
        import signal
        import threading

        self._prev = None
        if threading.current_thread() is threading.main_thread():
            try:
                self._prev = signal.getsignal(signal.SIGTERM)
                if self._prev in (signal.SIG_DFL, None):
                    signal.signal(signal.SIGTERM, self._raise)
                else:
                    self._prev = None
            except (ValueError, OSError):
                self._prev = None
        return self

    @staticmethod
    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    def __exit__(self, *exc):
        import signal

        if self._prev is not None:
            signal.signal(signal.SIGTERM, self._prev)
        return False


# ---------------------------------------------------------------------------------------------
# Download
# ---------------------------------------------------------------------------------------------

# Errors that mean "the network did not deliver" (as opposed to local disk errors, which propagate).
_NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                   TimeoutError, socket.timeout)


def _download(url: str, target: pathlib.Path, *, label: str, size: int | None,
              sha256: str | None, progress: bool, manual: str | None) -> str:
    """Stream ``url`` to ``target`` via a temporary file; return the SHA-256 of what was written.

    Raises :class:`WeightsUnavailableError` for network failures, incomplete transfers (short of the
    Content-Length, or, when no SHA-256 is pinned, content that :func:`sniff_weights` finds truncated or
    not weights at all: an HTML / JSON page), transfers past :data:`DEADLINE_S` or slower than
    :data:`MIN_RATE_BPS`; :class:`WeightsChecksumError` for complete transfers with the wrong size /
    SHA-256.  The temporary file is removed on any exit (also Ctrl-C, and SIGTERM when no other handler
    is installed); ``target`` is only touched by the final :func:`os.replace`.
    """
    import time

    from .progress import progress_bar

    def unavailable(reason: str) -> WeightsUnavailableError:
        return WeightsUnavailableError(
            f"Could not download {_describe(label, target)} from {url}: {reason}\n"
            + _manual_hint(label, url, target, manual),
            name=label, url=url, target=target)

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_parts(target)
    guard = _TerminateToException().__enter__()
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=target.name + ".part-", dir=target.parent)
    except BaseException:
        guard.__exit__(None, None, None)
        raise
    tmp = pathlib.Path(tmp_name)
    try:
        h = hashlib.sha256()
        received = 0
        t0 = time.monotonic()
        window = [(t0, 0)]  # (time, bytes received) marks for the minimum-rate check
        with os.fdopen(fd, "wb") as out:
            try:
                req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
                with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
                    length = resp.headers.get("Content-Length")
                    expected_len = int(length) if length and length.isdigit() else None
                    total = expected_len if expected_len is not None else size
                    read = getattr(resp, "read1", resp.read)  # what is there: the rate is checked between reads
                    with progress_bar(total, target.name, enabled=progress, unit="B", unit_scale=True,
                                      unit_divisor=1024, leave=False) as bar:
                        while True:
                            block = read(CHUNK_BYTES)
                            if not block:
                                break
                            out.write(block)
                            h.update(block)
                            received += len(block)
                            bar.update(len(block))
                            now = time.monotonic()
                            if now - t0 > DEADLINE_S:
                                raise unavailable(f"the download took longer than {DEADLINE_S:g} s "
                                                  f"(after {received} bytes)")
                            if now - window[0][0] >= RATE_WINDOW_S:
                                rate = (received - window[0][1]) / (now - window[0][0])
                                if rate < MIN_RATE_BPS:
                                    raise unavailable(f"the server sent {rate:.0f} bytes/s over the last "
                                                      f"{now - window[0][0]:.0f} s, below the minimum "
                                                      f"{MIN_RATE_BPS} bytes/s (after {received} bytes)")
                                window = [w for w in window if now - w[0] < RATE_WINDOW_S] or [(now, received)]
                            if now - window[-1][0] >= RATE_WINDOW_S / 4:
                                window.append((now, received))
            except urllib.error.HTTPError as e:
                raise unavailable(f"HTTP {e.code} {e.reason}") from e
            except _NETWORK_ERRORS as e:
                reason = getattr(e, "reason", None) or e
                raise unavailable(f"{type(e).__name__}: {reason} "
                                  f"(after {received} bytes)") from e
            out.flush()
            os.fsync(out.fileno())
        if expected_len is not None and received != expected_len:
            raise unavailable(f"transfer incomplete: the server announced {expected_len} bytes "
                              f"(Content-Length) but sent {received} bytes")
        digest = h.hexdigest()
        if size is not None and received != size:
            raise WeightsChecksumError(
                f"{label}: downloaded file from {url} has the wrong size: expected {size} bytes, "
                f"got {received} bytes. Nothing was saved.",
                name=label, url=url, path=target, kind="size", expected=size, got=received)
        if sha256 is not None and digest != sha256:
            raise WeightsChecksumError(
                f"{label}: downloaded file from {url} has the wrong SHA-256: expected {sha256}, "
                f"got {digest}. Nothing was saved.",
                name=label, url=url, path=target, kind="sha256", expected=sha256, got=digest)
        if sha256 is None:  # nothing pinned: at least the content must look like complete weights
            bad = sniff_weights(tmp, target.name)
            if bad:
                raise unavailable(f"what arrived ({received} bytes) is not usable: {bad}. Nothing was saved")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
        guard.__exit__(None, None, None)
    _write_sidecar(target, digest)
    return digest


# ---------------------------------------------------------------------------------------------
# Public entry point
# ---------------------------------------------------------------------------------------------


def _local_from_file_url(url: str) -> pathlib.Path:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file:// URL with a remote host is not supported: {url!r}")
    return pathlib.Path(urllib.request.url2pathname(parts.path))


def fetch(name_or_url: str | os.PathLike, *, sha256: str | None = None, size: int | None = None,
          progress: bool = True, cache: str | os.PathLike | None = None, force: bool = False,
          download: bool = True) -> pathlib.Path:
    """Return a local path for a weight file, downloading and verifying it on first use.

    Parameters
    ----------
    name_or_url :
        * a short name from :data:`KNOWN_FILES` (e.g. ``"stylegan3-t-ffhqu-256"``), or an http(s)
          URL equal to a known file's URL: cached as ``<cache>/<filename>``;
        * any other ``http://`` / ``https://`` URL: cached under ``<cache>/url/...``
          (see :func:`cache_path`);
        * a ``file://`` URL or a local path (``str`` / :class:`os.PathLike`): returned as is after
          an existence check (and a size / SHA-256 check when ``size`` / ``sha256`` are given).
    sha256 :
        Expected lower-case hex SHA-256; overrides the registry value.
    size :
        Expected size in bytes; overrides the registry value.
    progress :
        Show a ``tqdm`` progress bar (bytes) while downloading.
    cache :
        Cache directory to use instead of :func:`cache_dir`.
    force :
        Download again even when a cached (or ``V2S_NB_WEIGHTS_DIR``) copy exists; the cached copy is
        replaced only once the new one is complete and verified.
    download :
        ``False``: never touch the network; only a verified copy in ``V2S_NB_WEIGHTS_DIR`` or the cache is
        returned, else :class:`WeightsUnavailableError`.

    Returns
    -------
    pathlib.Path
        Path of the verified file.  A cached file is returned without any network access when it
        exists and matches the known size / SHA-256 (the SHA-256 of a file is remembered in a
        ``<file>.sha256.json`` sidecar, keyed by size and mtime, so files of :data:`REHASH_BELOW_BYTES` or
        more are not rehashed on every call; run :func:`verify_cache` to rehash them).

    Raises
    ------
    WeightsUnavailableError
        No network, HTTP error, interrupted transfer, the file has no download URL, or it is not
        on this machine and ``download=False``.  The message names the file, its URL and the path
        where a hand-downloaded copy is picked up.
    WeightsChecksumError
        The downloaded (or, for local paths, the given) file has the wrong size or SHA-256.  A
        failed download leaves no file behind.
    FileNotFoundError
        A local path / ``file://`` URL that does not exist.
    """
    exp_sha = _norm_sha(sha256)
    if size is not None and (not isinstance(size, int) or size < 0):
        raise ValueError(f"size must be a non-negative int (bytes), got {size!r}")
    if force and not download:
        raise ValueError("force=True downloads again but download=False forbids it: pass only one of them")

    if isinstance(name_or_url, os.PathLike):
        return _fetch_local(pathlib.Path(name_or_url), sha256=exp_sha, size=size)
    s = str(name_or_url)
    if s.lower().startswith("file:"):
        return _fetch_local(_local_from_file_url(s), sha256=exp_sha, size=size)

    kf = _lookup_known(s)
    if kf is None and not _is_http(s):
        if "://" in s:
            raise ValueError(f"unsupported URL scheme in {s!r} (use http, https or file)")
        return _fetch_local(pathlib.Path(s).expanduser(), sha256=exp_sha, size=size,
                            maybe_name=True)

    if kf is not None:
        label, url, manual = kf.name, kf.url, kf.homepage
        exp_sha = exp_sha if exp_sha is not None else kf.sha256
        size = size if size is not None else kf.size
    else:
        label, url, manual = _url_filename(s), s, None
    target = cache_path(s, cache=cache)

    if kf is not None and not force:
        found = _from_weights_dirs(kf, size=size, sha256=exp_sha)
        if found is not None:
            return found

    if target.is_file() and not force:
        try:
            _check_file(target, label=label, url=url, size=size, sha256=exp_sha)
            if exp_sha is None:
                _check_format(target, label=label, url=url, where="the cached ")
        except WeightsChecksumError as e:
            if url is None:
                raise WeightsChecksumError(
                    f"{e}\nReplace it with a correct copy. "
                    + _manual_hint(label, None, target, manual),
                    name=e.name, url=None, path=target, kind=e.kind,
                    expected=e.expected, got=e.got) from None
            warnings.warn(f"{e} " + ("Downloading it again." if download else "Not using it (download=False)."),
                          CacheWarning, stacklevel=2)
        else:
            if exp_sha is None:
                _warn_unverified(label, target, _cached_digest(target), target.stat().st_size)
            return target

    if not download:
        raise WeightsUnavailableError(
            f"{_describe(label, target)} is neither in V2S_NB_WEIGHTS_DIR nor in the cache, and download=False; "
            "call fetch() with download=True once with a network connection, or install it by hand.\n"
            + _manual_hint(label, url, target, manual), name=label, url=url, target=target)
    if url is None:
        raise WeightsUnavailableError(
            f"{_describe(label, target)} has no download URL and is not in the cache.\n"
            + _manual_hint(label, None, target, manual),
            name=label, url=None, target=target)

    digest = _download(url, target, label=label, size=size, sha256=exp_sha,
                       progress=progress, manual=manual)
    if exp_sha is None:
        _warn_unverified(label, target, digest, target.stat().st_size)
    return target


def _fetch_local(path: pathlib.Path, *, sha256: str | None, size: int | None,
                 maybe_name: bool = False) -> pathlib.Path:
    if not path.is_file():
        msg = f"No such file: {path}"
        if maybe_name and os.sep not in str(path) and "/" not in str(path):
            msg += (f". {str(path)!r} is not a known weight name either; known names: "
                    + ", ".join(sorted(KNOWN_FILES)))
        raise FileNotFoundError(msg)
    if size is not None or sha256 is not None:
        _check_file(path, label=path.name, url=None, size=size, sha256=sha256, sidecar=False)
    return path


# ---------------------------------------------------------------------------------------------
# Cache maintenance (``v2s-nb weights verify | clear``)
# ---------------------------------------------------------------------------------------------


def _cached_files(root: pathlib.Path) -> list[pathlib.Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(".sha256.json"))


def verify_cache(*, cache: str | os.PathLike | None = None) -> list[tuple[pathlib.Path, str, str]]:
    """Check every file in the cache: ``[(path, status, detail)]`` with status ``"ok"`` (size and SHA-256
    match the pinned values), ``"unpinned"`` (no SHA-256 pinned; the format looks right; detail = its SHA-256),
    ``"bad"`` (wrong size / SHA-256 / format, or a leftover partial download; detail says what) or
    ``"unknown"`` (a file this module did not write). Reads every byte of pinned files (hashing ~1 s per
    300 MB). Changes nothing."""
    root = pathlib.Path(cache).expanduser() if cache is not None else cache_dir()
    by_name = {kf.filename: kf for kf in KNOWN_FILES.values()}
    out = []
    for p in _cached_files(root):
        rel = p.relative_to(root)
        if ".part-" in p.name:
            out.append((p, "bad", "leftover partial download"))
            continue
        kf = by_name.get(p.name) if len(rel.parts) == 1 else None
        if kf is None and rel.parts[0] != "url":
            out.append((p, "unknown", "not a file v2s_nb downloads"))
            continue
        try:
            if kf is not None:
                _check_file(p, label=kf.name, url=kf.url, size=kf.size, sha256=kf.sha256, sidecar=False)
            bad = None if (kf is not None and kf.sha256) else sniff_weights(p)
        except WeightsChecksumError as e:
            out.append((p, "bad", str(e)))
            continue
        if bad:
            out.append((p, "bad", bad))
        elif kf is not None and kf.sha256:
            out.append((p, "ok", kf.sha256))
        else:
            out.append((p, "unpinned", sha256_file(p)))
    return out


def clear_cache(names=None, *, cache: str | os.PathLike | None = None, bad_only: bool = False) -> list[pathlib.Path]:
    """Remove cached files (and their ``.sha256.json`` records): all of them, those of the known short names
    ``names``, or (``bad_only``) those :func:`verify_cache` calls ``"bad"``. Only files :func:`fetch` writes
    are removed (known file names, ``url/``, partial downloads); other files in the folder and the
    ``V2S_NB_WEIGHTS_DIR`` folders are never touched. Returns the removed paths."""
    root = pathlib.Path(cache).expanduser() if cache is not None else cache_dir()
    if names:
        unknown = [n for n in names if n not in KNOWN_FILES and not _is_http(n)]
        if unknown:
            raise ValueError(f"unknown weight name(s) {unknown}; known: {', '.join(sorted(KNOWN_FILES))}")
        paths = [cache_path(n, cache=root) for n in names]
        paths = [p for p in paths if p.is_file()]
        paths += [q for n in names for q in cache_path(n, cache=root).parent.glob(
            glob_escape(cache_path(n, cache=root).name) + ".part-*")]
    elif bad_only:
        paths = [p for p, status, _ in verify_cache(cache=root) if status == "bad"]
    else:
        known = {kf.filename for kf in KNOWN_FILES.values()}
        paths = [p for p in _cached_files(root)  # only what fetch writes: other files in the folder stay
                 if p.relative_to(root).parts[0] == "url" or p.name in known
                 or any(p.name.startswith(k + ".part-") for k in known)]
    removed = []
    for p in paths:
        for q in (p, _sidecar(p)):
            try:
                q.unlink()
                if q == p:
                    removed.append(p)
            except FileNotFoundError:
                pass
    return removed
