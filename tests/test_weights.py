"""Tests for v2s_nb.weights.  Everything is served from 127.0.0.1; the real internet is blocked."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import pathlib
import re
import socket
import threading
import time
import warnings

import pytest

from v2s_nb import weights as W
from v2s_nb.weights import (KNOWN_FILES, KnownFile, UnverifiedWeightsWarning, WeightsChecksumError,
                            WeightsUnavailableError, cache_dir, fetch, sha256_file)

# A complete pickle (unpinned downloads must look like one), > 3 chunks, not chunk-aligned.
PAYLOAD = pickle.dumps(os.urandom(3 * (1 << 20) + 12345), protocol=4)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


# ---------------------------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_internet(monkeypatch):
    """Refuse any outgoing connection that is not to localhost."""
    real = socket.create_connection

    def guarded(address, *args, **kwargs):
        host = address[0]
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"test tried to reach the internet: {address!r}")
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", guarded)


@pytest.fixture(autouse=True)
def _fresh_warning_state(monkeypatch):
    monkeypatch.setattr(W, "_warned_unverified", set())


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    """Never touch the user's real cache, even from a test that forgets cache=."""
    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv("V2S_NB_WEIGHTS_DIR", raising=False)


class _Server:
    """Tiny HTTP server on a free 127.0.0.1 port.

    ``routes[path] = (body, mode)`` with mode ``"ok"``, ``"truncate"`` (announces the full
    Content-Length, sends half, closes), ``"nolength"`` (no Content-Length header) or an int HTTP
    status to answer with.  ``hits[path]`` counts requests.
    """

    def __init__(self):
        self.routes: dict[str, tuple[bytes, object]] = {}
        self.hits: dict[str, int] = {}
        self.trickle_s = 0.2
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path not in server.routes:
                    self.send_error(404)
                    return
                body, mode = server.routes[self.path]
                if isinstance(mode, int):
                    self.send_error(mode)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if mode != "nolength":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "trickle":  # one byte per server.trickle_s seconds, as long as the client listens
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(server.trickle_s)
                    except OSError:
                        pass
                    return
                if mode == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

            def log_message(self, *args):  # keep test output quiet
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _leftovers(d: pathlib.Path) -> list[str]:
    return sorted(p.name for p in d.rglob("*") if p.is_file() and ".part-" in p.name)


def _register(monkeypatch, name, url, filename, *, size=None, sha256=None) -> KnownFile:
    kf = KnownFile(name=name, url=url, filename=filename, size=size, sha256=sha256,
                   description="test file")
    monkeypatch.setitem(KNOWN_FILES, name, kf)
    return kf


# ---------------------------------------------------------------------------------------------
# Download + cache
# ---------------------------------------------------------------------------------------------


def test_download_then_cache_hit_without_request(server, monkeypatch, tmp_path):
    server.routes["/w/model.pkl"] = (PAYLOAD, "ok")
    _register(monkeypatch, "test-model", server.url("/w/model.pkl"), "model.pkl",
              size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    cache = tmp_path / "cache"

    p1 = fetch("test-model", cache=cache, progress=True)
    assert p1 == cache / "model.pkl"
    assert p1.read_bytes() == PAYLOAD
    assert server.hits["/w/model.pkl"] == 1
    assert _leftovers(cache) == []

    p2 = fetch("test-model", cache=cache, progress=False)
    assert p2 == p1
    assert server.hits["/w/model.pkl"] == 1  # served from cache, no request

    # Passing the known URL instead of the short name hits the same cache entry.
    assert fetch(server.url("/w/model.pkl"), cache=cache, progress=False) == p1
    assert server.hits["/w/model.pkl"] == 1


def test_cache_hit_when_sidecar_missing_rehashes_without_request(server, monkeypatch, tmp_path):
    server.routes["/m.bin"] = (PAYLOAD, "ok")
    _register(monkeypatch, "test-m", server.url("/m.bin"), "m.bin", sha256=PAYLOAD_SHA)
    cache = tmp_path / "c"
    p = fetch("test-m", cache=cache, progress=False)
    for side in cache.glob("*.sha256.json"):
        side.unlink()
    assert fetch("test-m", cache=cache, progress=False) == p
    assert server.hits["/m.bin"] == 1


def test_corrupt_cached_file_is_redownloaded(server, monkeypatch, tmp_path):
    server.routes["/m.bin"] = (PAYLOAD, "ok")
    _register(monkeypatch, "test-m", server.url("/m.bin"), "m.bin", sha256=PAYLOAD_SHA)
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "m.bin").write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="Downloading it again"):
        p = fetch("test-m", cache=cache, progress=False)
    assert p.read_bytes() == PAYLOAD
    assert server.hits["/m.bin"] == 1


def test_plain_url_download_and_cache(server, tmp_path):
    server.routes["/a/b/net.pkl"] = (PAYLOAD, "ok")
    cache = tmp_path / "c"
    url = server.url("/a/b/net.pkl")
    with pytest.warns(UnverifiedWeightsWarning, match=PAYLOAD_SHA):
        p = fetch(url, cache=cache, progress=False)
    assert p.name == "net.pkl" and cache in p.parents
    assert p == W.cache_path(url, cache=cache)
    assert p.read_bytes() == PAYLOAD
    # Second call: no request, and the "not verified" warning is not repeated.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fetch(url, cache=cache, progress=False) == p
    assert server.hits["/a/b/net.pkl"] == 1


def test_explicit_sha256_for_url(server, tmp_path):
    server.routes["/x.pkl"] = (PAYLOAD, "ok")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # verified: no UnverifiedWeightsWarning
        p = fetch(server.url("/x.pkl"), sha256=PAYLOAD_SHA.upper(), size=len(PAYLOAD),
                  cache=tmp_path, progress=False)
    assert p.read_bytes() == PAYLOAD


def test_unverified_known_file_reports_sha(server, monkeypatch, tmp_path):
    server.routes["/u.pkl"] = (PAYLOAD, "nolength")
    _register(monkeypatch, "test-u", server.url("/u.pkl"), "u.pkl")
    with pytest.warns(UnverifiedWeightsWarning) as rec:
        p = fetch("test-u", cache=tmp_path, progress=False)
    assert PAYLOAD_SHA in str(rec[0].message) and "test-u" in str(rec[0].message)
    assert p.read_bytes() == PAYLOAD


# ---------------------------------------------------------------------------------------------
# Failures leave nothing behind
# ---------------------------------------------------------------------------------------------


def test_checksum_mismatch_raises_and_leaves_no_file(server, monkeypatch, tmp_path):
    server.routes["/bad.pkl"] = (PAYLOAD, "ok")
    wrong = "0" * 64
    _register(monkeypatch, "test-bad", server.url("/bad.pkl"), "bad.pkl", sha256=wrong)
    cache = tmp_path / "c"
    with pytest.raises(WeightsChecksumError) as ei:
        fetch("test-bad", cache=cache, progress=False)
    msg = str(ei.value)
    assert wrong in msg and PAYLOAD_SHA in msg
    assert ei.value.kind == "sha256" and ei.value.expected == wrong and ei.value.got == PAYLOAD_SHA
    assert not (cache / "bad.pkl").exists()
    assert _leftovers(cache) == []
    assert list(cache.iterdir()) == []


def test_size_mismatch_raises_and_leaves_no_file(server, monkeypatch, tmp_path):
    server.routes["/s.pkl"] = (PAYLOAD, "ok")
    _register(monkeypatch, "test-s", server.url("/s.pkl"), "s.pkl", size=len(PAYLOAD) + 1)
    with pytest.raises(WeightsChecksumError, match=str(len(PAYLOAD) + 1)) as ei:
        fetch("test-s", cache=tmp_path, progress=False)
    assert ei.value.kind == "size" and ei.value.got == len(PAYLOAD)
    assert list(tmp_path.iterdir()) == []


def test_truncated_transfer_raises_and_leaves_no_file(server, monkeypatch, tmp_path):
    server.routes["/t.pkl"] = (PAYLOAD, "truncate")
    _register(monkeypatch, "test-t", server.url("/t.pkl"), "t.pkl")  # no size / sha known
    with pytest.raises(WeightsUnavailableError, match="incomplete|IncompleteRead") as ei:
        fetch("test-t", cache=tmp_path, progress=False)
    assert str(tmp_path / "t.pkl") in str(ei.value)
    assert not (tmp_path / "t.pkl").exists()
    assert _leftovers(tmp_path) == []


def test_early_close_without_length_caught_by_known_size(server, monkeypatch, tmp_path):
    # Server closes after half the bytes and never announced a length: the pinned size catches it.
    server.routes["/n.pkl"] = (PAYLOAD[: len(PAYLOAD) // 2], "nolength")
    _register(monkeypatch, "test-n", server.url("/n.pkl"), "n.pkl", size=len(PAYLOAD))
    with pytest.raises(WeightsChecksumError, match="size"):
        fetch("test-n", cache=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_http_error_status(server, monkeypatch, tmp_path):
    server.routes["/gone.pkl"] = (b"", 404)
    url = server.url("/gone.pkl")
    _register(monkeypatch, "test-404", url, "gone.pkl")
    with pytest.raises(WeightsUnavailableError, match="HTTP 404") as ei:
        fetch("test-404", cache=tmp_path, progress=False)
    assert url in str(ei.value) and str(tmp_path / "gone.pkl") in str(ei.value)
    assert list(tmp_path.iterdir()) == []


def test_offline_raises_naming_url_and_target(monkeypatch, tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/files/stylegan3-r-ffhqu-256x256.pkl"
    _register(monkeypatch, "test-off", url, "off.pkl")
    cache = tmp_path / "c"
    with pytest.raises(WeightsUnavailableError) as ei:
        fetch("test-off", cache=cache, progress=False)
    e = ei.value
    assert isinstance(e, RuntimeError)
    assert url in str(e) and str(cache / "off.pkl") in str(e) and "test-off" in str(e)
    assert e.url == url and e.target == cache / "off.pkl"
    assert _leftovers(cache) == [] and not (cache / "off.pkl").exists()


def test_offline_plain_url(tmp_path):
    url = f"http://127.0.0.1:{_closed_port()}/x/y.pth"
    with pytest.raises(WeightsUnavailableError) as ei:
        fetch(url, cache=tmp_path, progress=False)
    assert url in str(ei.value) and str(W.cache_path(url, cache=tmp_path)) in str(ei.value)


def test_no_url_entry_tells_where_to_put_file(monkeypatch, tmp_path):
    _register(monkeypatch, "test-manual", None, "manual.pth", sha256=PAYLOAD_SHA)
    with pytest.raises(WeightsUnavailableError) as ei:
        fetch("test-manual", cache=tmp_path, progress=False)
    assert str(tmp_path / "manual.pth") in str(ei.value)
    # Put it there by hand: now it is found (and verified) without any network.
    (tmp_path / "manual.pth").write_bytes(PAYLOAD)
    assert fetch("test-manual", cache=tmp_path, progress=False) == tmp_path / "manual.pth"
    # A wrong hand-placed copy is reported, not silently used.
    (tmp_path / "manual.pth").write_bytes(b"nope")
    with pytest.raises(WeightsChecksumError, match="manual.pth"):
        fetch("test-manual", cache=tmp_path, progress=False)


def test_weights_dir_is_searched_before_download_and_checked(server, monkeypatch, tmp_path):
    """A folder of pre-downloaded weights serves a known name with no request; a copy with the wrong
    SHA-256 there is passed over with a warning (and the file is downloaded), never used."""
    _register(monkeypatch, "test-wd", server.url("/wd.bin"), "wd.bin", sha256=PAYLOAD_SHA)
    server.routes["/wd.bin"] = (PAYLOAD, "ok")
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    (good / "wd.bin").write_bytes(PAYLOAD)
    (bad / "wd.bin").write_bytes(b"not the weights")
    monkeypatch.setenv("V2S_NB_WEIGHTS_DIR", os.pathsep.join([str(tmp_path / "missing"), str(good)]))
    assert W.weights_dirs() == [good]
    assert fetch("test-wd", cache=tmp_path / "c", progress=False) == good / "wd.bin"
    assert server.hits.get("/wd.bin", 0) == 0 and not (tmp_path / "c").exists()
    assert sorted(p.name for p in good.iterdir()) == ["wd.bin"]  # no sidecar written into the folder

    monkeypatch.setenv("V2S_NB_WEIGHTS_DIR", str(bad))
    with pytest.warns(RuntimeWarning, match="SHA-256 mismatch.*V2S_NB_WEIGHTS_DIR"):
        got = fetch("test-wd", cache=tmp_path / "c", progress=False)
    assert got == tmp_path / "c" / "wd.bin" and got.read_bytes() == PAYLOAD and server.hits["/wd.bin"] == 1


def test_unpinned_weights_dir_copy_is_sniffed_and_said_unverified(server, monkeypatch, tmp_path):
    """Without a pinned SHA-256, a copy in V2S_NB_WEIGHTS_DIR must at least be a whole file of its kind (an
    interrupted copy is passed over and downloaded instead), and using it says it was not verified."""
    import pickle

    whole = pickle.dumps({"G_ema": list(range(1000))}, protocol=4)
    _register(monkeypatch, "test-wd-pkl", server.url("/w.pkl"), "w.pkl")
    server.routes["/w.pkl"] = (whole, "ok")
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "w.pkl").write_bytes(whole[: len(whole) // 2])
    monkeypatch.setenv("V2S_NB_WEIGHTS_DIR", str(lab))
    with pytest.warns(RuntimeWarning, match="truncated.*V2S_NB_WEIGHTS_DIR"):
        got = fetch("test-wd-pkl", cache=tmp_path / "c", progress=False)
    assert got == tmp_path / "c" / "w.pkl" and server.hits["/w.pkl"] == 1
    (lab / "w.pkl").write_bytes(whole)
    W._warned_unverified.clear()
    with pytest.warns(UnverifiedWeightsWarning, match="NOT verified"):
        assert fetch("test-wd-pkl", cache=tmp_path / "c", progress=False) == lab / "w.pkl"


def test_landmark_cnn_files_are_pinned():
    for name in ("pfld-68", "rfb-320-face-detector"):
        kf = KNOWN_FILES[name]
        assert kf.url.startswith("https://") and "6f34bf9" in kf.url and kf.size and len(kf.sha256) == 64


# ---------------------------------------------------------------------------------------------
# Local files
# ---------------------------------------------------------------------------------------------


def test_file_url_and_plain_path(tmp_path):
    f = tmp_path / "dir with space" / "w.pkl"
    f.parent.mkdir()
    f.write_bytes(PAYLOAD)
    assert fetch(str(f)) == f
    assert fetch(f) == f
    assert fetch(f.as_uri()) == f
    assert fetch(f.as_uri(), sha256=PAYLOAD_SHA, size=len(PAYLOAD)) == f
    with pytest.raises(WeightsChecksumError):
        fetch(f, sha256="1" * 64)
    assert not list(f.parent.glob("*.json"))  # no sidecar written next to user files
    with pytest.raises(FileNotFoundError):
        fetch(str(tmp_path / "missing.pkl"))
    with pytest.raises(FileNotFoundError):
        fetch((tmp_path / "missing.pkl").as_uri())
    with pytest.raises(FileNotFoundError, match="known"):
        fetch("no-such-weight-name")


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        fetch("ftp://example.invalid/x.pkl")
    with pytest.raises(ValueError):
        fetch(str(tmp_path), sha256="xyz")


def test_sha256_file(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(PAYLOAD)
    assert sha256_file(f) == PAYLOAD_SHA
    assert sha256_file(f, chunk_bytes=7) == PAYLOAD_SHA
    (tmp_path / "e").write_bytes(b"")
    assert sha256_file(tmp_path / "e") == hashlib.sha256(b"").hexdigest()


# ---------------------------------------------------------------------------------------------
# Cache directory
# ---------------------------------------------------------------------------------------------


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "v"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "v"
    monkeypatch.delenv("V2S_NB_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "v2s_nb"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "v2s_nb"


def test_fetch_respects_v2s_nb_cache(server, monkeypatch, tmp_path):
    server.routes["/e.pkl"] = (PAYLOAD, "ok")
    _register(monkeypatch, "test-env", server.url("/e.pkl"), "e.pkl", sha256=PAYLOAD_SHA)
    monkeypatch.setenv("V2S_NB_CACHE", str(tmp_path / "env-cache"))
    p = fetch("test-env", progress=False)
    assert p == tmp_path / "env-cache" / "e.pkl"
    assert p.read_bytes() == PAYLOAD


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------

_SG3_EXPECTED = {
    f"stylegan3-{c}-{d}-{r}"
    for c in "tr"
    for d, r in [("ffhq", 1024), ("ffhqu", 1024), ("ffhqu", 256), ("metfaces", 1024),
                 ("metfacesu", 1024), ("afhqv2", 512)]
}


def test_known_files_well_formed():
    assert _SG3_EXPECTED <= set(KNOWN_FILES)
    sg3 = {k for k in KNOWN_FILES if k.startswith("stylegan3-")}
    assert sg3 == _SG3_EXPECTED
    for key, kf in KNOWN_FILES.items():
        assert isinstance(kf, KnownFile)
        assert kf.name == key
        assert kf.url is None or kf.url.startswith("https://"), key
        assert kf.filename and "/" not in kf.filename and "\\" not in kf.filename
        if kf.url is not None:
            assert kf.url.rsplit("/", 1)[-1] == kf.filename, key
        assert kf.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", kf.sha256), key
        assert kf.size is None or (isinstance(kf.size, int) and kf.size > 0), key
        assert kf.description
        m = re.fullmatch(r"stylegan3-([tr])-([a-z0-9]+)-(\d+)", key)
        if m:
            c, d, r = m.groups()
            assert kf.filename == f"stylegan3-{c}-{d}-{r}x{r}.pkl"
            assert kf.url == ("https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/"
                              f"versions/1/files/{kf.filename}")
    assert KNOWN_FILES["bisenet-face-parsing"].filename == "79999_iter.pth"
    with pytest.raises(Exception):
        KNOWN_FILES["bisenet-face-parsing"].size = 1  # frozen


def test_cache_path_for_known_name(tmp_path):
    assert W.cache_path("stylegan3-r-ffhq-1024", cache=tmp_path) == \
        tmp_path / "stylegan3-r-ffhq-1024x1024.pkl"
    # The NGC URL maps to the same place as the short name.
    url = KNOWN_FILES["stylegan3-t-afhqv2-512"].url
    assert W.cache_path(url, cache=tmp_path) == tmp_path / "stylegan3-t-afhqv2-512x512.pkl"


# ---------------------------------------------------------------------------------------------
# Nothing poisons the cache (issue 23)
# ---------------------------------------------------------------------------------------------

HTML = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>quota exceeded</body></html>\n" * 50


@pytest.mark.parametrize("body, mode, why", [
    (HTML, "ok", "HTML"),
    (b'{"error": "rate limited", "code": 429}', "ok", "JSON"),
    (PAYLOAD[: len(PAYLOAD) // 2], "nolength", "truncated"),  # close-delimited body cut short
    (b"", "nolength", "empty"),
])
def test_unpinned_download_that_is_not_weights_is_never_cached(server, tmp_path, body, mode, why):
    server.routes["/net.pkl"] = (body, mode)
    url = server.url("/net.pkl")
    for attempt in (1, 2):  # nothing cached: the second call asks the server again and fails again
        with pytest.raises(WeightsUnavailableError, match=why):
            fetch(url, cache=tmp_path, progress=False)
        assert server.hits["/net.pkl"] == attempt
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_truncated_zip_checkpoint_is_refused(server, tmp_path):
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", PAYLOAD)
    data = buf.getvalue()
    server.routes["/m.pth"] = (data[: len(data) - 100], "nolength")
    with pytest.raises(WeightsUnavailableError, match="zip archive is truncated"):
        fetch(server.url("/m.pth"), cache=tmp_path, progress=False)
    server.routes["/m.pth"] = (data, "nolength")
    with pytest.warns(UnverifiedWeightsWarning):
        assert fetch(server.url("/m.pth"), cache=tmp_path, progress=False).read_bytes() == data


def test_trickling_server_times_out_and_leaves_nothing(server, monkeypatch, tmp_path):
    server.routes["/slow.pkl"] = (PAYLOAD[:4096], "trickle")
    monkeypatch.setattr(W, "MIN_RATE_BPS", 100)
    monkeypatch.setattr(W, "RATE_WINDOW_S", 1.0)
    t0 = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match="below the minimum"):
        fetch(server.url("/slow.pkl"), cache=tmp_path, progress=False)
    assert time.monotonic() - t0 < 10
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_overall_deadline(server, monkeypatch, tmp_path):
    server.routes["/slow.pkl"] = (PAYLOAD[:4096], "trickle")
    server.trickle_s = 0.01  # ~100 bytes/s: above the minimum rate set below, but 4096 bytes take ~40 s
    monkeypatch.setattr(W, "MIN_RATE_BPS", 1)
    monkeypatch.setattr(W, "DEADLINE_S", 1.0)
    with pytest.raises(WeightsUnavailableError, match="longer than 1 s"):
        fetch(server.url("/slow.pkl"), cache=tmp_path, progress=False)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_killed_download_leaves_no_part_file(server, tmp_path, sig):
    import signal
    import subprocess
    import sys

    server.routes["/big.pkl"] = (PAYLOAD[:4096], "trickle")
    script = pathlib.Path(__file__).with_name("fetch_url.py")
    # -X faulthandler: if the signal is not acted on, SIGABRT below prints where the process was stuck.
    # SIGINT back to its default first: a shell's background job (`pytest ... &`) starts with it ignored, and
    # Python keeps an inherited SIG_IGN (no KeyboardInterrupt, the download never stops)
    proc = subprocess.Popen([sys.executable, "-X", "faulthandler", str(script), server.url("/big.pkl"),
                             str(tmp_path)], stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not list(tmp_path.rglob("*.part-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the download never started"
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(getattr(signal, sig))
    try:
        proc.communicate(timeout=30)  # (reads stderr, so a long traceback cannot fill the pipe and block it)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        pytest.fail(f"{sig} did not end the download within 30 s; where it was:\n{proc.communicate()[1]}")
    assert proc.returncode != 0
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_stale_part_files_are_removed(server, monkeypatch, tmp_path):
    server.routes["/w.pkl"] = (PAYLOAD, "ok")
    url = server.url("/w.pkl")
    target = W.cache_path(url, cache=tmp_path)
    target.parent.mkdir(parents=True)
    stale = target.with_name(target.name + ".part-abc123")
    stale.write_bytes(b"\x80half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    with pytest.warns(UnverifiedWeightsWarning):
        fetch(url, cache=tmp_path, progress=False)
    assert not stale.exists()


def test_force_downloads_again(server, monkeypatch, tmp_path):
    server.routes["/f.pkl"] = (PAYLOAD, "ok")
    _register(monkeypatch, "test-f", server.url("/f.pkl"), "f.pkl", sha256=PAYLOAD_SHA)
    fetch("test-f", cache=tmp_path, progress=False)
    fetch("test-f", cache=tmp_path, progress=False)
    assert server.hits["/f.pkl"] == 1
    assert fetch("test-f", cache=tmp_path, progress=False, force=True).read_bytes() == PAYLOAD
    assert server.hits["/f.pkl"] == 2


def test_small_cached_file_changed_in_place_is_caught(server, monkeypatch, tmp_path):
    """A byte changed with size and mtime kept (tar / rsync -a / cp -p, bit rot) is not hidden by the sidecar
    record for a file under REHASH_BELOW_BYTES (PAYLOAD: 3 MiB): it is downloaded again."""
    server.routes["/s.pkl"] = (PAYLOAD, "ok")
    _register(monkeypatch, "test-s", server.url("/s.pkl"), "s.pkl", size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    p = fetch("test-s", cache=tmp_path, progress=False)
    fetch("test-s", cache=tmp_path, progress=False)  # a recorded digest, whatever the size
    st = p.stat()
    data = bytearray(PAYLOAD)
    data[100] ^= 0xFF
    p.write_bytes(bytes(data))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.warns(RuntimeWarning, match="SHA-256 mismatch.*Downloading it again"):
        assert fetch("test-s", cache=tmp_path, progress=False).read_bytes() == PAYLOAD
    assert server.hits["/s.pkl"] == 2


def test_download_false_looks_only_on_this_machine(server, monkeypatch, tmp_path):
    """download=False returns a verified copy from V2S_NB_WEIGHTS_DIR or the cache, and otherwise raises
    WeightsUnavailableError (naming where to put the file) without a request."""
    server.routes["/o.pkl"] = (PAYLOAD, "ok")
    _register(monkeypatch, "test-o", server.url("/o.pkl"), "o.pkl", size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    cache = tmp_path / "c"
    with pytest.raises(WeightsUnavailableError, match=re.escape(str(cache / "o.pkl"))):
        fetch("test-o", cache=cache, progress=False, download=False)
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "o.pkl").write_bytes(PAYLOAD)
    monkeypatch.setenv("V2S_NB_WEIGHTS_DIR", str(lab))
    assert fetch("test-o", cache=cache, progress=False, download=False) == lab / "o.pkl"
    monkeypatch.delenv("V2S_NB_WEIGHTS_DIR")
    cache.mkdir()
    (cache / "o.pkl").write_bytes(PAYLOAD[::-1])  # damaged cached copy: said, not used, not replaced
    with pytest.warns(RuntimeWarning, match="Not using it"), pytest.raises(WeightsUnavailableError):
        fetch("test-o", cache=cache, progress=False, download=False)
    (cache / "o.pkl").write_bytes(PAYLOAD)
    assert fetch("test-o", cache=cache, progress=False, download=False) == cache / "o.pkl"
    assert server.hits.get("/o.pkl", 0) == 0
    with pytest.raises(ValueError, match="download=False"):
        fetch("test-o", cache=cache, force=True, download=False)


@pytest.mark.parametrize("pinned", ["size", "none"])
def test_truncated_file_in_cache_is_redownloaded(server, monkeypatch, tmp_path, pinned):
    server.routes["/t.pkl"] = (PAYLOAD, "ok")
    _register(monkeypatch, "test-t", server.url("/t.pkl"), "t.pkl", size=len(PAYLOAD) if pinned == "size" else None)
    (tmp_path / "t.pkl").write_bytes(PAYLOAD[: len(PAYLOAD) // 3])  # an interrupted copy by hand, say
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedWeightsWarning)
        with pytest.warns(RuntimeWarning, match="Downloading it again"):
            p = fetch("test-t", cache=tmp_path, progress=False)
    assert p.read_bytes() == PAYLOAD and server.hits["/t.pkl"] == 1


def test_verify_and_clear_cache(server, monkeypatch, tmp_path):
    server.routes["/g.pkl"] = (PAYLOAD, "ok")
    server.routes["/copy/g.pkl"] = (PAYLOAD, "ok")
    _register(monkeypatch, "test-g", server.url("/g.pkl"), "g.pkl", size=len(PAYLOAD), sha256=PAYLOAD_SHA)
    good = fetch("test-g", cache=tmp_path, progress=False)
    with pytest.warns(UnverifiedWeightsWarning):
        url_file = fetch(server.url("/copy/g.pkl"), cache=tmp_path, progress=False)
    url_file.write_bytes(HTML)  # poisoned after the fact
    (tmp_path / "g.pkl.part-xyz").write_bytes(b"\x80")
    (tmp_path / "notes.txt").write_text("mine")
    status = {p.name: s for p, s, _ in W.verify_cache(cache=tmp_path)}
    assert status == {"g.pkl": "ok", url_file.name: "bad", "g.pkl.part-xyz": "bad", "notes.txt": "unknown"}
    removed = W.clear_cache(cache=tmp_path, bad_only=True)
    assert sorted(p.name for p in removed) == sorted([url_file.name, "g.pkl.part-xyz"])
    assert good.is_file()
    assert W.clear_cache(cache=tmp_path) == [good] and not good.exists()
    assert (tmp_path / "notes.txt").is_file()  # not ours: never removed


def test_weights_command(monkeypatch, tmp_path, capsys):
    from v2s_nb.cli import main

    cache = tmp_path / "default-cache"  # what the autouse fixture points V2S_NB_CACHE at
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "stylegan3-r-ffhq-1024x1024.pkl").write_bytes(HTML)
    assert main(["weights", "verify"]) == 1
    out = capsys.readouterr().out
    assert "bad" in out and "HTML" in out
    assert main(["weights", "clear", "stylegan3-r-ffhq-1024"]) == 0
    assert "1 file(s) removed" in capsys.readouterr().out
    assert main(["weights", "verify"]) == 0
