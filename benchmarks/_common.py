"""Helpers shared by the benchmark scripts: import the package from this checkout, sync, CUDA-event timing, peak
memory, and argparse checks (counts, sizes, devices, files) that turn a bad command line into one ``error:`` line and
exit status 2 instead of a traceback from deep inside the run."""

import argparse
import inspect
import resource
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))


def sync(device):
    """Wait for queued GPU work, so host timers measure it."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device):
    """CUDA: peak bytes allocated by torch; CPU: peak resident set of the process so far (GiB)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB (Linux)


def cuda_ms(fn, reps=10):
    """Milliseconds per call of ``fn`` on the current CUDA stream (CUDA events; one warm-up call first)."""
    fn()
    torch.cuda.synchronize()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    stop.record()
    torch.cuda.synchronize()
    return start.elapsed_time(stop) / reps


def _int_at_least(text, low):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"want an integer >= {low}, got {value}")
    return value


def positive_int(text):
    """argparse ``type=``: an integer >= 1 (a count, size, dimension); else ``error: argument --x: ...``, exit 2."""
    return _int_at_least(text, 1)


def nonnegative_int(text):
    """argparse ``type=``: an integer >= 0 (where 0 means none / skip)."""
    return _int_at_least(text, 0)


def positive_float(text):
    """argparse ``type=``: a number > 0 (an amount, e.g. GiB)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"want a number > 0, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"want a number > 0, got {value:g}")
    return value


def device(text):
    """argparse ``type=`` for ``--device``: a torch device this process can use, returned as given (a string).

    ``cuda`` (or ``cuda:N``) without a CUDA GPU visible to this PyTorch is refused, as is a name torch does not know;
    a string default is checked too when the flag is not given (argparse converts it)."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: this PyTorch sees no CUDA GPU (CPU-only build or no GPU); "
                                             f"use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: only {torch.cuda.device_count()} CUDA GPU(s) visible")
    return text


def existing_file(text):
    """argparse ``type=``: the path of an existing file, as a Path."""
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def require_cuda(parser, what="this benchmark"):
    """For scripts that only run on a GPU: ``parser.error`` (one line, exit 2) when this PyTorch sees no CUDA GPU."""
    if not torch.cuda.is_available():
        parser.error(f"{what} needs a CUDA GPU; this PyTorch sees none (CPU-only build or no GPU)")


def compile_for_gpu(fn, signature, constexprs, arch, options=None):
    """Triton's compiled kernel of the ``@triton.jit`` function ``fn`` for compute capability ``arch`` (e.g. 90),
    as a launch on PyTorch's tensors would compile it, without a GPU. ``signature``: {parameter: Triton type, e.g.
    '*fp16', 'i32', 'fp32'} (parameters missing from it and from ``constexprs`` are taken as 'i32');
    ``constexprs``: {parameter: value}; ``options``: e.g. {'num_warps': 4}. Pointer parameters are declared
    16-byte aligned, as a launch specializes them (PyTorch's allocator starts tensors on such boundaries): without
    it Triton assumes no alignment and makes scalar loads where the real launch makes vector ones."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = fn.arg_names  # the kernel's parameters in order
    full = {k: "constexpr" if k in constexprs else signature.get(k, "i32") for k in names}
    pointers = [names.index(k) for k in names if full[k].startswith("*")]
    if "constexprs" in inspect.signature(ASTSource).parameters:  # Triton 3.3 and later
        src = ASTSource(fn=fn, signature=full, constexprs={(names.index(k),): v for k, v in constexprs.items()},
                        attrs={(i,): [["tt.divisibility", 16]] for i in pointers})
    else:  # 3.0-3.2: the constants by name apart from the signature, the alignment in an AttrsDescriptor
        try:
            from triton.backends.compiler import AttrsDescriptor  # 3.2
            attrs = AttrsDescriptor.from_hints({i: 16 for i in pointers})
        except ImportError:
            from triton.compiler.compiler import AttrsDescriptor  # 3.0, 3.1
            attrs = AttrsDescriptor(divisible_by_16=set(pointers))
        src = ASTSource(fn=fn, signature={k: v for k, v in full.items() if v != "constexpr"},
                        constants=dict(constexprs), attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(options or {}))
