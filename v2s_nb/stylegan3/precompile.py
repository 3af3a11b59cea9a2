"""Compile the generator's Triton kernels in parallel processes before their first use.

Triton compiles a kernel the first time each variant of it is launched (a variant: the kernel with one set of
compile-time constants, e.g. one layer's filter sizes), one at a time, in the launching process, and keeps the
result in its on-disk cache (``~/.triton/cache``, or ``TRITON_CACHE_DIR``). On a fresh machine, such as a new Colab
runtime, preparing a 1024 px clip meets some sixty variants of about two seconds each before its work starts.
Compiling holds Python's GIL, so threads don't help; processes do.

:func:`precompile` runs the generator calls a stage will make once with every Triton launch skipped (Triton's
``jit_cache_hook``: no compile, no launch, the outputs are left unset and thrown away). Each variant it meets that is
neither in memory nor in the on-disk cache goes at once to a worker process (started on demand, one per CPU at
most), which compiles it into the on-disk cache while the dry run goes on. The workers are forked by one process
that has imported torch, this package and Triton once (started at the first call and kept), so they start in
milliseconds, at every stage.
The stage's real launches then load them from there in milliseconds. Results are unchanged: the same kernels run,
compiled from the same source with the same options. Nothing here is needed for correctness; where Triton lacks
the hook, or a worker fails, the kernel compiles at its first launch as it would have.

The stages (the encoder, PTI, pose encoding on images, ``Reenactor.render_video``) call :func:`ensure_compiled`,
with ``fast_config.precompile_workers`` (``V2S_NB_PRECOMPILE_WORKERS``) processes: -1 (the default) one per CPU, 16
at most; 0 turns it off. Measured in docs/performance.md ("Kernel compiles on a fresh machine").
"""

from __future__ import annotations

import atexit
import base64
import collections
import contextlib
import hashlib
import importlib
import json
import os
import pickle
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

from ..progress import progress_bar

#: Gradient targets of a workload: none (rendering), the codes ``ws`` (pose encoding, inversion by optimisation),
#: the synthesis weights (PTI).
GRADS = ("none", "ws", "weights")

#: The package whose kernels are collected; other libraries' Triton kernels compile and run as usual.
_OURS = __name__.rsplit(".", 2)[0] + "."


@dataclass(frozen=True)
class Workload:
    """One kind of generator call: ``batch`` codes through ``G.synthesis``; ``grad`` in :data:`GRADS`;
    ``force_fp32`` as ``G.synthesis`` takes it (False: the snapshot's fp16 layers in fp16 on CUDA)."""

    batch: int
    grad: str = "none"
    force_fp32: bool = False

    def __post_init__(self):
        if self.grad not in GRADS:
            raise ValueError(f"grad={self.grad!r}: use one of {', '.join(GRADS)}")
        if int(self.batch) < 1:
            raise ValueError(f"batch={self.batch}: a workload needs at least one code")


@dataclass
class KernelVariant:
    """One Triton kernel variant as a launch hands it to Triton's compiler, in a form a worker process can take."""

    module: str  # the module that defines the @triton.jit function
    name: str  # its name there
    signature: dict  # {parameter: Triton type}
    constexprs: dict  # {(index,): value}
    attrs: dict  # {(index,): specialisations}, e.g. pointer alignment
    options: dict  # the compile options, as the launch parsed them


@dataclass
class PrecompileReport:
    """What :func:`precompile` did: variants met in the dry run, those already on disk, those compiled, the
    processes that compiled them, and the variants that failed (they compile at first use). Times in seconds:
    ``seconds`` the whole call (wall), ``dry_run_seconds`` its dry run (compiling had begun meanwhile),
    ``compile_seconds`` the compiles summed over variants (what launching them would have cost one after another)
    and ``longest_seconds`` the longest one."""

    variants: int = 0
    cached: int = 0
    compiled: int = 0
    workers: int = 0
    seconds: float = 0.0
    dry_run_seconds: float = 0.0
    compile_seconds: float = 0.0
    longest_seconds: float = 0.0
    failed: list = field(default_factory=list)
    note: str = ""

    def __repr__(self) -> str:
        if self.note:
            return f"PrecompileReport({self.note})"
        fail = f", {len(self.failed)} failed (they compile at first use)" if self.failed else ""
        work = (f"; compiles summed {self.compile_seconds:.1f} s, longest {self.longest_seconds:.1f} s"
                if self.compiled else "")
        return (f"PrecompileReport({self.variants} kernel variants not in memory: {self.cached} on disk, "
                f"{self.compiled} compiled by {self.workers} processes{fail}; {self.seconds:.1f} s, dry run "
                f"{self.dry_run_seconds:.1f} s{work})")


def _knobs():
    """Triton's ``knobs`` module where it has the compile hook this module needs (Triton 3.4 and later), else None."""
    try:
        from triton import knobs
    except Exception:
        return None
    runtime = getattr(knobs, "runtime", None)
    return knobs if runtime is not None and hasattr(runtime, "jit_cache_hook") else None


def supported(device) -> bool:
    """Whether kernels can be precompiled for ``device``: a CUDA device, a Triton that builds the fast path's kernels
    for it and has its compile hook, and a system that forks processes and passes them file descriptors (Linux does)."""
    from . import fast_ops

    return (torch.device(device).type == "cuda" and fast_ops.HAVE_TRITON and fast_ops.device_unfit(device) is None
            and _knobs() is not None and hasattr(os, "fork") and hasattr(socket, "send_fds"))


def _options_from(specialization_data: str) -> dict:
    # JSON turned the options' tuples into lists; Triton's own preload turns them back the same way
    opts = json.loads(specialization_data)["options"]
    return {k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()}


@contextlib.contextmanager
def _launches_skipped(found: dict, on_found=None):
    """Inside: launches of this package's kernels that would compile are skipped and recorded in ``found`` (by
    kernel and Triton's specialisation key); launches of variants already in memory run, as do other libraries'."""
    knobs = _knobs()
    before = knobs.runtime.jit_cache_hook

    def hook(**kw):
        fn = kw["fn"].jit_function.fn  # the Python function under @triton.jit
        if not fn.__module__.startswith(_OURS):
            return before(**kw) if before is not None else None
        c = kw["compile"]
        v = KernelVariant(module=fn.__module__, name=fn.__name__, signature=dict(c["signature"]),
                          constexprs=dict(c["constants"]), attrs=dict(c["configs"][0]),
                          options=_options_from(c["specialization_data"]))
        key = (v.module, v.name, str(kw["key"]))  # Triton's key: the launch's types and options
        if key not in found:
            found[key] = v
            if on_found is not None:
                on_found(v)
        return True  # Triton: the hook handled it, so neither compile nor launch

    knobs.runtime.jit_cache_hook = hook
    try:
        yield
    finally:
        knobs.runtime.jit_cache_hook = before


def _dry_run(G, w: Workload) -> None:
    """``G.synthesis`` on ``w.batch`` copies of the average code, and its gradient w.r.t. ``w.grad``, as a stage
    runs them (in a dry run the Triton kernels are skipped, so the numbers are meaningless and discarded)."""
    syn = G.synthesis
    ws = G.mapping.w_avg.detach().to(G.device)[None, None].expand(int(w.batch), G.num_ws, -1).contiguous()
    if w.grad == "none":
        with torch.no_grad():
            syn(ws, force_fp32=w.force_fp32)
        return
    if w.grad == "ws":
        ws.requires_grad_(True)
        torch.autograd.grad(syn(ws, force_fp32=w.force_fp32).square().mean(), [ws])
        return
    params = [p for p in syn.parameters() if p.is_floating_point()]
    flags = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        with torch.enable_grad():
            loss = syn(ws, force_fp32=w.force_fp32).square().mean()
            torch.autograd.grad(loss, params, allow_unused=True)
    finally:
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def collect(G, workloads, on_found=None) -> list[KernelVariant]:
    """The kernel variants ``workloads`` (:class:`Workload` s) would compile on ``G``'s device: the generator calls
    run with this package's uncompiled launches skipped. Variants already in memory don't appear. ``on_found``, if
    given, is called with each variant as the dry run meets it."""
    found: dict = {}
    with _launches_skipped(found, on_found):
        for w in workloads:
            _dry_run(G, w)
    torch.cuda.synchronize(G.device)
    return list(found.values())


def _source(v: KernelVariant):
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(v.module), v.name)
    return ASTSource(fn=fn, signature=v.signature, constexprs=v.constexprs, attrs=v.attrs)


def on_disk(v: KernelVariant, target) -> bool:
    """Whether Triton's on-disk cache holds ``v`` compiled for ``target`` (looked up as ``triton.compile`` does;
    False where that lookup can't be made on this Triton)."""
    try:
        from triton.compiler.compiler import (get_cache_invalidating_env_vars, get_cache_key, get_cache_manager,
                                              make_backend)

        src = _source(v)
        backend = make_backend(target)
        options = backend.parse_options(dict(v.options, **src.parse_options()))
        key = get_cache_key(src, backend, options, env_vars=get_cache_invalidating_env_vars())
        manager = get_cache_manager(hashlib.sha256(key.encode("utf-8")).hexdigest())
        name = f"{src.name[:150]}.json"
        return (manager.get_group(name) or {}).get(name) is not None
    except Exception:
        return False


def _try_compile(v: KernelVariant, target) -> tuple[str, float]:
    """``compile_variant``, as ("ok" or the error's one-line text, seconds); a variant that fails compiles at its
    first launch instead."""
    t = time.perf_counter()
    try:
        return "ok", compile_variant(v, target)
    except Exception as e:
        return f"{type(e).__name__}: {e}".replace("\n", " ").replace("\t", " "), time.perf_counter() - t


def compile_variant(v: KernelVariant, target) -> float:
    """Compile ``v`` for ``target`` (a ``triton.backends.compiler.GPUTarget``) into Triton's on-disk cache; seconds.
    Needs no GPU. Runs in the worker processes of :func:`compile_variants`."""
    import triton

    t = time.perf_counter()
    triton.compile(_source(v), target=target, options=dict(v.options))
    return time.perf_counter() - t


#: Most worker processes by default: beyond this the longest compile sets the time.
MAX_WORKERS = 16


def default_workers() -> int:
    """Worker processes: the CPUs this process may use, :data:`MAX_WORKERS` at most."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_WORKERS))


def compile_variants(variants, target, workers: int | None = None, progress: bool = True) -> tuple[int, list]:
    """Compile ``variants`` into Triton's on-disk cache, ``workers`` processes at a time (default:
    :func:`default_workers`; 1: in this process). Each worker takes the next variant when it has finished one.
    Returns (processes used, [(variant, error text)] for those that failed: they compile at their first launch
    instead)."""
    variants = list(variants)
    n = min(len(variants), workers or default_workers())
    with _Compiler(target, n) as compiler:
        for v in variants:
            compiler.submit(v)
        compiler.finish(progress)
    return compiler.processes, compiler.failed


#: Seconds without any worker finishing a variant after which precompiling gives up (one takes a few seconds).
STALL_SECONDS = 600

#: The modules whose Triton kernels the workers compile: imported once, by the process that forks the workers.
KERNEL_MODULES = ("v2s_nb.stylegan3.fast_ops", "v2s_nb.stylegan3.fast_conv", "v2s_nb.stylegan3.fast_modulation")

# The process that forks the workers (see _Forker): "import ...; _forker_main(control socket's fd)".
_FORKER = "import sys; from v2s_nb.stylegan3.precompile import _forker_main; _forker_main(int(sys.argv[1]))"


def _pack(obj) -> str:
    return base64.b64encode(pickle.dumps(obj)).decode("ascii")


def _unpack(text: str):
    return pickle.loads(base64.b64decode(text))


def _forker_main(control_fd: int) -> None:
    """The forking process: imports what a worker needs once, then forks a worker for each request on its control
    socket (the request carries the worker's socket and log as file descriptors). Ends when the socket closes (the
    process that started it has ended or let it go); the workers end when their own sockets close."""
    import triton.compiler  # noqa: F401  (imported here so that no worker imports it)

    for name in KERNEL_MODULES:
        importlib.import_module(name)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the system reaps the workers
    control = socket.socket(fileno=control_fd)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 16, 2)
        except OSError:
            break
        if not message:
            break
        if os.fork() == 0:
            control.close()
            _worker_main(*fds)  # never returns
        for fd in fds:
            os.close(fd)


def _worker_main(conn_fd: int, log_fd: int) -> None:
    """A forked worker: its first line on ``conn_fd`` is (target, environment); then it compiles each variant it
    reads ("index<TAB>pickled variant, base64"), answering "index<TAB>ok or error text<TAB>seconds". Its first answer
    line is "pid<TAB>its pid". Whatever it prints goes to its log."""
    code = 1
    try:
        # the forker ignores its children's ends; a worker must not (it waits for the compilers it runs: with
        # SIGCHLD ignored, Python's subprocess would read every exit status as 0)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.dup2(log_fd, 2)
        os.dup2(log_fd, 1)
        os.close(log_fd)
        conn = socket.socket(fileno=conn_fd)
        with conn.makefile("r", encoding="ascii") as lines:
            target, env = _unpack(lines.readline())
            os.environ.clear()  # the caller's now (Triton's cache folder, its settings), not the forker's
            os.environ.update(env)
            conn.sendall(f"pid\t{os.getpid()}\n".encode())
            for line in lines:
                i, _, packed = line.partition("\t")
                answer, seconds = _try_compile(_unpack(packed), target)
                conn.sendall(f"{i}\t{answer}\t{seconds:.3f}\n".encode())
        code = 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class _Worker:
    """A worker process as its parent sees it: the socket that carries variants out and answers back, its log (its
    stdout and stderr), its pid once it has said it."""

    def __init__(self, conn: socket.socket, log):
        self.conn, self.log, self.pid, self._partial = conn, log, None, b""
        self.ended = False

    def fileno(self) -> int:
        return self.conn.fileno()

    def send(self, text: str) -> bool:
        """False where the worker has ended."""
        try:
            self.conn.sendall(text.encode("ascii"))
            return True
        except OSError:
            return False

    def lines(self) -> list | None:
        """The whole lines that have come (after a select said some bytes have); None once the worker has ended."""
        try:
            data = self.conn.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self.ended = True
            return None
        *done, self._partial = (self._partial + data).split(b"\n")
        return [line.decode("utf-8", "replace") for line in done]  # an error text may hold any character

    def last_words(self) -> str:
        self.log.seek(0)
        return " ".join(self.log.read().strip().splitlines()[-1:])

    def close(self, kill: bool) -> None:
        if kill and self.pid and not self.ended:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGKILL)
        for f in (self.conn, self.log):
            with contextlib.suppress(OSError):
                f.close()


class _Forker:
    """One process, with torch, this package and Triton imported, that forks the worker processes: a worker starts
    in milliseconds instead of the seconds that importing torch takes (once per worker before, and again for each
    stage). Started on first use and kept for this process's life (:func:`_forker`): a few hundred MB of memory,
    mostly torch's libraries, which the workers share with it."""

    def __init__(self, code: str = _FORKER):
        self.control, theirs = socket.socketpair()
        env = dict(os.environ)  # it imports this package from wherever this process does
        paths = [p for p in sys.path if p] + [env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(paths).rstrip(os.pathsep)
        self.log = tempfile.TemporaryFile("w+")
        # a plain subprocess: multiprocessing's spawn would import the caller's __main__ again (a script without an
        # ``if __name__ == "__main__"`` guard would run twice), and forking this process would copy its CUDA state
        self.process = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                        stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log, env=env)
        theirs.close()

    def alive(self) -> bool:
        return self.process.poll() is None

    def start_worker(self, target) -> _Worker:
        """A new worker for ``target``, with this process's environment; it takes variants at once (they wait in its
        socket while the forker is still importing)."""
        mine, theirs = socket.socketpair()
        log = tempfile.TemporaryFile("w+")
        try:
            socket.send_fds(self.control, [b"w"], [theirs.fileno(), log.fileno()])
        finally:
            theirs.close()
        worker = _Worker(mine, log)
        worker.send(_pack((target, dict(os.environ))) + "\n")
        return worker

    def close(self) -> None:
        self.control.close()  # it ends when it reads that
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


_THE_FORKER: list = []  # this process's forker, once started


def _forker() -> _Forker:
    """This process's :class:`_Forker`, started on first use (and again if it has ended)."""
    if _THE_FORKER and not _THE_FORKER[0].alive():
        _THE_FORKER.pop().close()
    if not _THE_FORKER:
        _THE_FORKER.append(_Forker())
    return _THE_FORKER[0]


@atexit.register
def _stop_forker() -> None:
    """Lets this process's forker go (at exit: it would end by itself, but Python would warn of it running)."""
    while _THE_FORKER:
        _THE_FORKER.pop().close()


class _Compiler:
    """Compiles the variants handed to :meth:`submit` into Triton's on-disk cache: in up to ``n`` worker
    processes (forked by :func:`_forker`), each started when a variant finds no idle one and fed the next variant
    when it answers, so that compiling overlaps the dry run that finds the variants; with ``n`` <= 1 in this
    process, at :meth:`finish`. Used as a context manager: leaving it stops the workers."""

    def __init__(self, target, n: int):
        self.target, self.n = target, n
        self.variants: list = []
        self.todo: collections.deque = collections.deque()  # indices waiting for a worker
        self.busy: dict = {}  # worker -> the index it compiles
        self.idle: list = []
        self.workers: list = []  # every worker started
        self.sel = selectors.DefaultSelector()
        self.failed: list = []  # (variant, error text)
        self.done = 0
        self.work_seconds = 0.0  # summed over variants: the compile time saved by having them ready
        self.longest = 0.0
        self.started = 0
        self.bar = None

    @property
    def processes(self) -> int:
        """Processes that compiled: the workers started, or this one."""
        return self.started if self.n > 1 else min(1, len(self.variants))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for w in self.workers:  # the idle ones end when their socket closes; one still compiling is killed
            w.close(kill=w in self.busy)
        self.sel.close()
        if self.bar is not None:
            self.bar.close()

    def submit(self, v: KernelVariant) -> None:
        self.variants.append(v)
        self.todo.append(len(self.variants) - 1)
        if self.n <= 1:
            return
        if not self.idle and self.started < self.n:
            self._start()
        self._hand_out()
        self._read(timeout=0)

    def _start(self) -> None:
        w = _forker().start_worker(self.target)
        self.workers.append(w)
        self.sel.register(w, selectors.EVENT_READ)
        self.idle.append(w)
        self.started += 1

    def _hand_out(self) -> None:
        while self.todo and self.idle:
            w = self.idle.pop()
            i = self.todo.popleft()
            if w.send(f"{i}\t{_pack(self.variants[i])}\n"):
                self.busy[w] = i
            else:  # it has ended: the variant waits for another worker; its end is read as EOF
                self.todo.appendleft(i)

    def _answer(self, i: int, answer: str, seconds: float) -> None:
        self.done += 1
        self.work_seconds += seconds
        self.longest = max(self.longest, seconds)
        if answer != "ok":
            self.failed.append((self.variants[i], answer))
        if self.bar is not None:
            self.bar.update(1)

    def _read(self, timeout: float) -> bool:
        """Take the workers' answers (waiting up to ``timeout`` s for one), hand out more; False on a stall."""
        ready = self.sel.select(timeout=timeout)
        for key, _ in ready:
            w = key.fileobj
            lines = w.lines()
            if lines is None:  # the worker ended
                self.sel.unregister(w)
                if w in self.idle:
                    self.idle.remove(w)
                if w in self.busy:  # it died on a variant: say why (its last words), go on with the others
                    self._answer(self.busy.pop(w), f"worker process ended: {w.last_words() or 'no message'}", 0.0)
                continue
            for line in lines:
                i, answer, *seconds = line.split("\t")
                if i == "pid":
                    w.pid = int(answer)
                    continue
                self.busy.pop(w, None)
                self.idle.append(w)
                self._answer(int(i), answer, float(seconds[0]))
        self._hand_out()
        return bool(ready)

    def finish(self, progress: bool = True) -> None:
        """Wait until every submitted variant is compiled or has failed (a progress bar while waiting)."""
        left = len(self.variants) - self.done
        if left:
            self.bar = progress_bar(total=len(self.variants), desc="compiling GPU kernels", enabled=progress,
                                    unit="kernel", initial=self.done)
        if self.n <= 1:
            while self.todo:
                i = self.todo.popleft()
                self._answer(i, *_try_compile(self.variants[i], self.target))
            return
        for w in self.idle:  # nothing more to hand out: idle workers may end
            self.sel.unregister(w)
            w.close(kill=False)
        self.idle.clear()
        while self.busy or (self.todo and self.sel.get_map()):
            if not self._read(timeout=STALL_SECONDS):  # one stuck on a variant: the rest compile at first use
                self.failed += [(self.variants[i], f"no answer in {STALL_SECONDS} s") for i in self.busy.values()]
                break
        # variants never handed out (every worker died) compile at first use
        self.failed += [(self.variants[i], "not compiled: no worker left") for i in self.todo]
        self.todo.clear()


def precompile(G, workloads, workers: int | None = None, progress: bool = True) -> PrecompileReport:
    """Compile, in parallel processes, the Triton kernels that ``workloads`` will launch on ``G`` and that are not
    compiled yet, so that the work itself starts without compiling.

    Args:
        G: a :class:`~v2s_nb.stylegan3.Generator` on a CUDA device (elsewhere: nothing to do).
        workloads: :class:`Workload` s, e.g. ``[Workload(8), Workload(1, grad="weights")]`` for rendering batches of
            8 and PTI.
        workers: processes (default: one per CPU this process may use, :data:`MAX_WORKERS` at most; 1 compiles
            here).
        progress: a progress bar while compiling.
    Returns:
        :class:`PrecompileReport`. Safe to call again: a second call finds everything compiled and returns quickly.
    """
    t = time.perf_counter()
    if not supported(G.device):
        return PrecompileReport(note="nothing to do: kernels are compiled only for CUDA, with Triton 3.4 or later")
    workloads = [w if isinstance(w, Workload) else Workload(*w) for w in workloads]
    from triton.runtime.driver import driver

    target = driver.active.get_current_target()
    cached = 0

    def found(v: KernelVariant) -> None:  # during the dry run: compiling starts at once
        nonlocal cached
        if on_disk(v, target):
            cached += 1
        else:
            compiler.submit(v)

    with _Compiler(target, workers or default_workers()) as compiler:
        variants = collect(G, workloads, found)
        dry_run = time.perf_counter() - t
        compiler.finish(progress)
    return PrecompileReport(variants=len(variants), cached=cached, compiled=compiler.done - len(compiler.failed),
                            workers=compiler.processes, seconds=time.perf_counter() - t, dry_run_seconds=dry_run,
                            compile_seconds=compiler.work_seconds, longest_seconds=compiler.longest,
                            failed=compiler.failed)


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """The batch sizes ``n`` items in batches of ``batch_size`` meet: the full one, and the remainder's."""
    sizes = {min(n, batch_size)} | ({n % batch_size} if n > batch_size and n % batch_size else set())
    return sorted(sizes)


_DONE: set = set()  # (architecture, fast-path settings, workload) this process has precompiled

#: The reports of this process's :func:`ensure_compiled` calls that precompiled, oldest first (a benchmark reads
#: them to say where a stage's time went).
REPORTS: list = []


def _architecture(G) -> tuple:
    syn = G.synthesis
    return str(G.device), G.img_resolution, tuple(tuple(getattr(syn, n).weight.shape) for n in syn.layer_names)


def ensure_compiled(G, workloads, progress: bool = True) -> PrecompileReport | None:
    """:func:`precompile` as a stage calls it before its work: once per process for each architecture and workload,
    with ``fast_config``'s ``precompile_workers`` (-1, the default: one process per CPU, 16 at most; 0: off). Returns
    the report, or None when there was nothing to do.
    A dry run out of GPU memory is given up silently (the stage then meets that itself, with its own message); any
    other failure here is a warning, never an error: the kernels then compile at their first launch."""
    from . import fast_config

    cfg = fast_config.current()
    if cfg.precompile_workers == 0 or not supported(G.device):
        return None
    base = (_architecture(G), cfg)
    todo = [w for w in workloads if (base, w) not in _DONE]
    if not todo:
        return None
    try:
        report = precompile(G, todo, workers=None if cfg.precompile_workers < 0 else cfg.precompile_workers,
                            progress=progress)
    except torch.cuda.OutOfMemoryError:
        torch.cuda.empty_cache()
        return None
    except Exception as e:  # precompiling only saves time: it must never stop the work
        import warnings

        from ..errors import V2SWarning

        warnings.warn(f"precompiling the GPU kernels failed ({type(e).__name__}: {e}); they compile at their first "
                      "launch instead. Unset V2S_NB_PRECOMPILE_WORKERS (or set it to 0) to skip this step.",
                      V2SWarning, stacklevel=3)
        return None
    _DONE.update((base, w) for w in todo)
    REPORTS.append(report)
    return report
