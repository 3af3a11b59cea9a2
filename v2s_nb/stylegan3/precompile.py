"""Compile the generator's Triton kernels in parallel processes before their first use.

Triton compiles a kernel the first time each variant of it is launched (a variant: the kernel with one set of
compile-time constants, e.g. one layer's filter sizes), one at a time, in the launching process, and keeps the
result in its on-disk cache (``~/.triton/cache``, or ``TRITON_CACHE_DIR``). On a fresh machine, such as a new Colab
runtime, preparing a 1024 px clip meets some sixty variants of about two seconds each before its work starts.
Compiling holds Python's GIL, so threads don't help; processes do.

:func:`precompile` runs the generator calls a stage will make once with every Triton launch skipped (Triton's
``jit_cache_hook``: no compile, no launch, the outputs are left unset and thrown away), collects the variants that
are neither in memory nor in the on-disk cache, and compiles those in worker processes into the on-disk cache.
The stage's real launches then load them from there in milliseconds. Results are unchanged: the same kernels run,
compiled from the same source with the same options. Nothing here is needed for correctness; where Triton lacks
the hook, or a worker fails, the kernel compiles at its first launch as it would have.

The stages (the encoder, PTI, pose encoding on images, ``Reenactor.render_video``) call :func:`ensure_compiled`; it
does nothing unless ``fast_config.precompile_workers`` (``V2S_NB_PRECOMPILE_WORKERS``) is set, -1 for one process per
CPU: off by default until the speed-up has been measured on a GPU (docs/performance.md).
"""

from __future__ import annotations

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

from ..atomic import write_atomic
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
    worker processes, wall seconds (dry run included), and the variants that failed (they compile at first use)."""

    variants: int = 0
    cached: int = 0
    compiled: int = 0
    workers: int = 0
    seconds: float = 0.0
    failed: list = field(default_factory=list)
    note: str = ""

    def __repr__(self) -> str:
        if self.note:
            return f"PrecompileReport({self.note})"
        fail = f", {len(self.failed)} failed (they compile at first use)" if self.failed else ""
        return (f"PrecompileReport({self.variants} kernel variants not in memory: {self.cached} on disk, "
                f"{self.compiled} compiled by {self.workers} processes{fail}; {self.seconds:.1f} s)")


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
def _launches_skipped(found: dict):
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
        found.setdefault((v.module, v.name, str(kw["key"])), v)  # Triton's key: the launch's types and options
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


def collect(G, workloads) -> list[KernelVariant]:
    """The kernel variants ``workloads`` (:class:`Workload` s) would compile on ``G``'s device: the generator calls
    run with this package's uncompiled launches skipped. Variants already in memory don't appear."""
    found: dict = {}
    with _launches_skipped(found):
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


def _try_compile(v: KernelVariant, target) -> str:
    """``compile_variant``, as "ok" or the error's one-line text (the variant then compiles at first use)."""
    try:
        compile_variant(v, target)
        return "ok"
    except Exception as e:
        return f"{type(e).__name__}: {e}".replace("\n", " ").replace("\t", " ")


def compile_variant(v: KernelVariant, target) -> float:
    """Compile ``v`` for ``target`` (a ``triton.backends.compiler.GPUTarget``) into Triton's on-disk cache; seconds.
    Needs no GPU. Runs in the worker processes of :func:`compile_variants`."""
    import triton

    t = time.perf_counter()
    triton.compile(_source(v), target=target, options=dict(v.options))
    return time.perf_counter() - t


def default_workers() -> int:
    """Worker processes: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def compile_variants(variants, target, workers: int | None = None, progress: bool = True) -> tuple[int, list]:
    """Compile ``variants`` into Triton's on-disk cache, ``workers`` processes at a time (default: one per CPU;
    1: in this process). Each worker takes the next variant when it has finished one. Returns (processes used,
    [(variant, error text)] for those that failed: they compile at their first launch instead)."""
    variants = list(variants)
    n = min(len(variants), workers or default_workers())
    bar = progress_bar(total=len(variants), desc="compiling GPU kernels", enabled=progress, unit="kernel")
    try:
        if n <= 1:
            failed = []
            for v in variants:
                answer = _try_compile(v, target)
                if answer != "ok":
                    failed.append((v, answer))
                bar.update(1)
            return n, failed
        return n, _compile_in_processes(variants, target, n, bar)
    finally:
        bar.close()


#: Seconds without any worker finishing a variant after which precompiling gives up (one takes a few seconds).
STALL_SECONDS = 600

# A worker: reads variant indices on stdin, compiles each, answers "index<TAB>ok" or "index<TAB>error" on stdout.
_WORKER = "import sys; from v2s_nb.stylegan3.precompile import _worker; _worker(sys.argv[1])"


def _worker(job_file: str) -> None:
    with open(job_file, "rb") as f:
        variants, target = pickle.load(f)
    for line in sys.stdin:
        i = int(line)
        print(f"{i}\t{_try_compile(variants[i], target)}", flush=True)


def _compile_in_processes(variants, target, n: int, bar) -> list:
    # Plain subprocesses rather than multiprocessing: spawn would import the caller's __main__ again (a script
    # without an ``if __name__ == "__main__"`` guard would run twice), and fork would copy this process's CUDA state.
    failed = []
    with tempfile.TemporaryDirectory(prefix="v2s_nb_kernels_") as tmp:
        job_file = os.path.join(tmp, "jobs.pkl")
        write_atomic(job_file, lambda f: pickle.dump((variants, target), f))
        env = dict(os.environ)  # the workers import this package from wherever this process does
        paths = [p for p in sys.path if p] + [env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(paths).rstrip(os.pathsep)
        todo = collections.deque(range(len(variants)))
        busy: dict = {}
        logs = {}
        sel = selectors.DefaultSelector()
        try:
            for k in range(n):
                logs[k] = tempfile.TemporaryFile("w+")  # the worker's stderr: its last words if it dies
                p = subprocess.Popen([sys.executable, "-c", _WORKER, job_file], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=logs[k], text=True, env=env)
                sel.register(p.stdout, selectors.EVENT_READ, (p, k))
                _give(p, todo, busy)
            while sel.get_map():
                ready = sel.select(timeout=STALL_SECONDS)
                if not ready:  # a worker stuck on one variant: stop them all, the rest compile at first use
                    failed += [(variants[i], f"no answer in {STALL_SECONDS} s") for i in busy.values()]
                    busy.clear()
                    break
                for key, _ in ready:
                    p, k = key.data
                    line = key.fileobj.readline()
                    if line:
                        i, _, answer = line.rstrip("\n").partition("\t")
                        busy.pop(p, None)
                        if answer != "ok":
                            failed.append((variants[int(i)], answer))
                        bar.update(1)
                        _give(p, todo, busy)
                        continue
                    sel.unregister(key.fileobj)  # the worker ended
                    p.wait()
                    if p in busy:  # it died on a variant: say why (its last words), go on with the others
                        logs[k].seek(0)
                        why = " ".join(logs[k].read().strip().splitlines()[-1:]) or f"exit code {p.returncode}"
                        failed.append((variants[busy.pop(p)], f"worker process ended: {why}"))
                        bar.update(1)
        finally:
            for key in list(sel.get_map().values()):
                key.data[0].kill()
            for f in logs.values():
                f.close()
        # variants never handed out (every worker died) compile at first use
        failed += [(variants[i], "not compiled: no worker left") for i in todo]
    return failed


def _give(p, todo, busy) -> None:
    """Hand worker ``p`` the next variant, or close its input when none is left (it then exits)."""
    if todo:
        i = todo.popleft()
        busy[p] = i
        try:
            p.stdin.write(f"{i}\n")
            p.stdin.flush()
        except OSError:  # it has ended: the variant goes back for another worker, its end is read as EOF
            todo.appendleft(busy.pop(p))
    else:
        with contextlib.suppress(OSError):
            p.stdin.close()


def precompile(G, workloads, workers: int | None = None, progress: bool = True) -> PrecompileReport:
    """Compile, in parallel processes, the Triton kernels that ``workloads`` will launch on ``G`` and that are not
    compiled yet, so that the work itself starts without compiling.

    Args:
        G: a :class:`~v2s_nb.stylegan3.Generator` on a CUDA device (elsewhere: nothing to do).
        workloads: :class:`Workload` s, e.g. ``[Workload(8), Workload(1, grad="weights")]`` for rendering batches of
            8 and PTI.
        workers: processes (default: one per CPU this process may use; 1 compiles here).
        progress: a progress bar while compiling.
    Returns:
        :class:`PrecompileReport`. Safe to call again: a second call finds everything compiled and returns quickly.
    """
    t = time.perf_counter()
    if not supported(G.device):
        return PrecompileReport(note="nothing to do: kernels are compiled only for CUDA, with Triton 3.4 or later")
    workloads = [w if isinstance(w, Workload) else Workload(*w) for w in workloads]
    from triton.runtime.driver import driver

    variants = collect(G, workloads)
    target = driver.active.get_current_target()
    todo = [v for v in variants if not on_disk(v, target)]
    n, failed = compile_variants(todo, target, workers, progress) if todo else (0, [])
    return PrecompileReport(variants=len(variants), cached=len(variants) - len(todo), compiled=len(todo) - len(failed),
                            workers=n, seconds=time.perf_counter() - t, failed=failed)


def batch_sizes(n: int, batch_size: int) -> list[int]:
    """The batch sizes ``n`` items in batches of ``batch_size`` meet: the full one, and the remainder's."""
    sizes = {min(n, batch_size)} | ({n % batch_size} if n > batch_size and n % batch_size else set())
    return sorted(sizes)


_DONE: set = set()  # (architecture, fast-path settings, workload) this process has precompiled


def _architecture(G) -> tuple:
    syn = G.synthesis
    return str(G.device), G.img_resolution, tuple(tuple(getattr(syn, n).weight.shape) for n in syn.layer_names)


def ensure_compiled(G, workloads, progress: bool = True) -> PrecompileReport | None:
    """:func:`precompile` as a stage calls it before its work: once per process for each architecture and workload,
    with ``fast_config``'s ``precompile_workers`` (0, the default until this has been timed on a GPU: off; -1: one
    process per CPU). Returns the report, or None when there was nothing to do.
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
    return report
