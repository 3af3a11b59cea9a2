"""Compile the generator's Triton kernels in parallel processes before their first use.

Triton compiles a kernel the first time each variant of it is launched (a variant: the kernel with one set of
compile-time constants, e.g. one layer's filter sizes), one at a time, in the launching process, and keeps the
result in its on-disk cache (``~/.triton/cache``, or ``TRITON_CACHE_DIR``). On a fresh machine, such as a new Colab
runtime, preparing a 1024 px clip meets some sixty variants of about two seconds each before its work starts.
Compiling holds Python's GIL, so threads don't help; processes do.

:func:`precompile` runs the generator calls a stage will make once with every Triton launch skipped (Triton's
``jit_cache_hook``: no compile, no launch, the outputs are left unset and thrown away). Each variant it meets that is
neither in memory nor in the on-disk cache goes at once to a worker process (started on demand, one per CPU at
most), which compiles it into the on-disk cache while the dry run goes on.
The stage's real launches then load them from there in milliseconds. Results are unchanged: the same kernels run,
compiled from the same source with the same options. Nothing here is needed for correctness; where Triton lacks
the hook, or a worker fails, the kernel compiles at its first launch as it would have.

The stages (the encoder, PTI, pose encoding on images, ``Reenactor.render_video``) call :func:`ensure_compiled`,
with ``fast_config.precompile_workers`` (``V2S_NB_PRECOMPILE_WORKERS``) processes: -1 (the default) one per CPU, 16
at most; 0 turns it off. Measured in docs/performance.md ("Kernel compiles on a fresh machine").
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import importlib
import json
import os
import pickle
import selectors
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
    """Whether kernels can be precompiled for ``device``: a CUDA device, Triton with its compile hook, and the fast
    path's kernels present."""
    from . import fast_ops

    return torch.device(device).type == "cuda" and fast_ops.HAVE_TRITON and _knobs() is not None


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


#: Most worker processes by default: beyond this the longest compile and the workers' start (importing torch, about
#: 300 MB each) set the time.
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

# A worker: compiles each variant it reads on stdin ("index<TAB>pickled variant, base64"), answers
# "index<TAB>ok or error text<TAB>seconds" on stdout.
_WORKER = "import sys; from v2s_nb.stylegan3.precompile import _worker; _worker(sys.argv[1])"


def _pack(obj) -> str:
    return base64.b64encode(pickle.dumps(obj)).decode("ascii")


def _unpack(text: str):
    return pickle.loads(base64.b64decode(text))


def _worker(target: str) -> None:
    target = _unpack(target)
    # stdout carries the answers alone: anything else printed there (by a library, or a compiler it runs) would
    # come before an answer and could leave it unread in the parent's buffer, so it goes to stderr (the log)
    answers = os.dup(sys.stdout.fileno())
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    for line in sys.stdin:
        i, _, packed = line.partition("\t")
        answer, seconds = _try_compile(_unpack(packed), target)
        data = f"{i}\t{answer}\t{seconds:.3f}\n".encode()
        while data:  # a pipe: the whole line, at once unless it is long
            data = data[os.write(answers, data):]


class _Compiler:
    """Compiles the variants handed to :meth:`submit` into Triton's on-disk cache: in up to ``n`` worker
    processes, each started when a variant finds no idle one and fed the next variant when it answers, so that
    compiling (and the workers' start, a few seconds of imports) overlaps the dry run that finds the variants;
    with ``n`` <= 1 in this process, at :meth:`finish`. Used as a context manager: leaving it stops the workers."""

    def __init__(self, target, n: int):
        self.target, self.n = target, n
        self.variants: list = []
        self.todo: collections.deque = collections.deque()  # indices waiting for a worker
        self.busy: dict = {}  # process -> the index it compiles
        self.idle: list = []
        self.logs: dict = {}  # process -> its stderr (its last words if it dies)
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
        for p, log in self.logs.items():  # every worker, running (waiting for work, or stuck) or ended
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout, log):
                with contextlib.suppress(OSError):
                    f.close()
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
        # Plain subprocesses rather than multiprocessing: spawn would import the caller's __main__ again (a script
        # without an ``if __name__ == "__main__"`` guard would run twice), and fork would copy this process's CUDA
        # state.
        env = dict(os.environ)  # the workers import this package from wherever this process does
        paths = [p for p in sys.path if p] + [env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(paths).rstrip(os.pathsep)
        log = tempfile.TemporaryFile("w+")
        p = subprocess.Popen([sys.executable, "-c", _WORKER, _pack(self.target)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.logs[p] = log
        self.sel.register(p.stdout, selectors.EVENT_READ, p)
        self.idle.append(p)
        self.started += 1

    def _hand_out(self) -> None:
        while self.todo and self.idle:
            p = self.idle.pop()
            i = self.todo.popleft()
            try:
                p.stdin.write(f"{i}\t{_pack(self.variants[i])}\n")
                p.stdin.flush()
                self.busy[p] = i
            except OSError:  # it has ended: the variant waits for another worker; its end is read as EOF
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
            p = key.data
            line = key.fileobj.readline()
            if line:
                i, answer, seconds = line.rstrip("\n").split("\t")
                self.busy.pop(p, None)
                self.idle.append(p)
                self._answer(int(i), answer, float(seconds))
                continue
            self.sel.unregister(key.fileobj)  # the worker ended
            p.wait()
            if p in self.idle:
                self.idle.remove(p)
            if p in self.busy:  # it died on a variant: say why (its last words), go on with the others
                self.logs[p].seek(0)
                why = " ".join(self.logs[p].read().strip().splitlines()[-1:]) or f"exit code {p.returncode}"
                self._answer(self.busy.pop(p), f"worker process ended: {why}", 0.0)
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
        for p in self.idle:  # nothing more to hand out: idle workers may exit
            with contextlib.suppress(OSError):
                p.stdin.close()
        self.idle.clear()
        while self.busy or (self.todo and self.sel.get_map()):
            if not self._read(timeout=STALL_SECONDS):  # one stuck on a variant: the rest compile at first use
                self.failed += [(self.variants[i], f"no answer in {STALL_SECONDS} s") for i in self.busy.values()]
                self.busy.clear()
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
