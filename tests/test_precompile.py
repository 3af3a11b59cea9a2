"""Precompiling the generator's Triton kernels in worker processes (v2s_nb.stylegan3.precompile).

The CPU tests compile real kernel variants for a Hopper GPU (sm_90; Triton needs no GPU for that) into a private
on-disk cache, in this process and in worker processes, and check that the cache holds them afterwards. The GPU test
collects the variants of real generator calls and checks that, once precompiled, every one is on disk.
"""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch

from conftest import requires_cuda
from v2s_nb.stylegan3 import precompile as pc
from v2s_nb.stylegan3 import tiny_generator

triton = pytest.importorskip("triton")


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Triton's on-disk cache in a fresh folder (the workers inherit it through the environment)."""
    monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / "triton-cache"))
    return tmp_path / "triton-cache"


def _variant(bo: int, bn: int = 8) -> pc.KernelVariant:
    """The styles' modulation kernel with channel blocks ``bo`` (as fast_modulation launches it)."""
    sig = {k: "*fp32" for k in ("s_ptr", "e_ptr", "g_ptr", "scale_ptr", "d_ptr")}
    sig.update({k: "i32" for k in ("n", "c_in", "c_out")})
    sig.update({k: "constexpr" for k in ("BN", "BI", "BO")})
    return pc.KernelVariant("v2s_nb.stylegan3.fast_modulation", "_modulation_kernel", sig,
                            {(8,): bn, (9,): 64, (10,): bo}, {(i,): [["tt.divisibility", 16]] for i in range(5)},
                            {"num_warps": 4})


def _hopper():
    from triton.backends.compiler import GPUTarget

    return GPUTarget("cuda", 90, 32)


def test_variants_compile_into_the_disk_cache_here_and_in_workers(private_cache):
    target = _hopper()
    vs = [_variant(16), _variant(32), _variant(64)]
    assert not any(pc.on_disk(v, target) for v in vs)
    assert pc.compile_variants(vs[:1], target, progress=False) == (1, [])
    assert [pc.on_disk(v, target) for v in vs] == [True, False, False]
    n, failed = pc.compile_variants(vs[1:], target, workers=2, progress=False)
    assert (n, failed) == (2, [])
    assert all(pc.on_disk(v, target) for v in vs)
    assert any(private_cache.rglob("*.cubin"))


def test_variants_handed_over_one_at_a_time_start_workers_on_demand(private_cache):
    """As a dry run hands them over: a worker starts for a variant that finds none idle, up to the limit; the rest
    wait for the first worker to answer; all end up on disk, with each compile's time reported."""
    target = _hopper()
    vs = [_variant(16), _variant(32), _variant(64)]
    with pc._Compiler(target, 2) as compiler:
        compiler.submit(vs[0])
        assert compiler.started == 1
        compiler.submit(vs[1])  # the first worker is busy (still starting): a second one
        compiler.submit(vs[2])  # both busy and the limit reached: it waits
        assert compiler.started == 2 and list(compiler.todo) == [2]
        compiler.finish(progress=False)
    assert compiler.failed == [] and compiler.done == 3 and compiler.processes == 2
    assert 0 < compiler.longest <= compiler.work_seconds
    assert all(pc.on_disk(v, target) for v in vs)
    assert _ended([w.pid for w in compiler.workers])  # no worker left running


def _ended(pids, seconds: float = 20.0) -> bool:
    """Whether the processes ``pids`` all end within ``seconds`` (the forker's children: the system reaps them)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def forker_running(monkeypatch):
    """Puts a forker started from ``code`` in place of this process's own for one test, and stops it after."""
    started = []

    def run(code):
        forker = pc._Forker(code)
        started.append(forker)
        monkeypatch.setattr(pc, "_THE_FORKER", [forker])
        return forker

    yield run
    for forker in started:
        forker.close()


_PATCHED_FORKER = ("import sys; from v2s_nb.stylegan3 import precompile as pc; real = pc.compile_variant\n"
                   "def patched(v, target):\n{body}\n    return real(v, target)\n"
                   "pc.compile_variant = patched; pc._forker_main(int(sys.argv[1]))")


def test_what_a_worker_prints_goes_to_its_log(private_cache, forker_running):
    """What a compile prints (here: a stand-in that prints before compiling) goes to the worker's log, never into
    its answers."""
    forker_running(_PATCHED_FORKER.format(body="    print('a library talking', flush=True)"))
    with pc._Compiler(_hopper(), 2) as compiler:
        compiler.submit(_variant(16))
        compiler.finish(progress=False)
        assert compiler.failed == [] and compiler.done == 1
        (worker,) = compiler.workers
        worker.log.seek(0)
        assert "a library talking" in worker.log.read()


def test_a_worker_that_dies_is_reported_and_the_others_compile(private_cache, forker_running):
    """A worker that ends on a variant (here: it exits while compiling BO=32): that variant is reported with the
    worker's last words and compiles at its first launch; the others compile in the workers left, a compile that
    raises (BO=64) is reported with its error."""
    forker_running(_PATCHED_FORKER.format(
        body="    if v.constexprs[(10,)] == 32:\n        print('giving up', flush=True); import os; os._exit(3)\n"
             "    if v.constexprs[(10,)] == 64:\n        raise RuntimeError('naïve kernel – refused')"))
    target = _hopper()
    vs = [_variant(16), _variant(32), _variant(64), _variant(128)]
    n, failed = pc.compile_variants(vs, target, workers=2, progress=False)
    why = {v.constexprs[(10,)]: text for v, text in failed}
    assert n == 2 and sorted(why) == [32, 64]
    assert "worker process ended" in why[32] and "giving up" in why[32]
    assert why[64] == "RuntimeError: naïve kernel – refused"  # any character comes through in an error's text
    assert [pc.on_disk(v, target) for v in vs] == [True, False, False, True]


def test_a_worker_stuck_on_a_variant_is_given_up_and_stopped(private_cache, forker_running, monkeypatch):
    """A worker that doesn't answer within STALL_SECONDS (here: it sleeps on BO=32): the wait ends, that variant is
    reported (it compiles at its first launch) and the stuck worker is stopped."""
    forker_running(_PATCHED_FORKER.format(
        body="    if v.constexprs[(10,)] == 32:\n        import time; time.sleep(120)"))
    target = _hopper()
    with pc._Compiler(target, 2) as compiler:
        for v in (_variant(32), _variant(16)):
            compiler.submit(v)
        deadline = time.monotonic() + 120
        while compiler.done < 1 and time.monotonic() < deadline:  # the forker's imports (seconds) and BO=16
            compiler._read(timeout=1)
        monkeypatch.setattr(pc, "STALL_SECONDS", 4)  # from here, for the stuck one alone
        compiler.finish(progress=False)
        assert [v.constexprs[(10,)] for v, _ in compiler.failed] == [32] and "no answer in 4 s" in compiler.failed[0][1]
        pids = [w.pid for w in compiler.workers]
    assert all(pids) and _ended(pids, seconds=10)
    assert pc.on_disk(_variant(16), target)


def test_the_forker_imports_every_module_with_kernels():
    """KERNEL_MODULES (imported once by the forker, so that no worker imports them) names every module of the package
    that defines a Triton kernel: one left out would be imported by each worker, at each stage."""
    import ast
    from pathlib import Path

    root = Path(pc.__file__).resolve().parents[2]
    with_kernels = set()
    for path in (root / "v2s_nb").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any("triton.jit" in ast.unparse(d) for d in node.decorator_list):
                with_kernels.add(".".join(path.relative_to(root).with_suffix("").parts))
    assert with_kernels and with_kernels == set(pc.KERNEL_MODULES)


def test_one_forker_serves_every_call_with_the_callers_environment(tmp_path, monkeypatch):
    """The process that forks the workers starts once and is kept: a later call's workers come from it at once, and
    they compile with the caller's environment as it is then (here: another Triton cache folder); where it has
    ended, a new one starts."""
    monkeypatch.setattr(pc, "_THE_FORKER", [])
    target = _hopper()
    calls = [[_variant(16), _variant(32)], [_variant(64), _variant(128)], [_variant(16, 16), _variant(32, 16)]]
    try:
        for k, vs in enumerate(calls[:2]):
            monkeypatch.setenv("TRITON_CACHE_DIR", str(tmp_path / f"cache{k}"))
            assert pc.compile_variants(vs, target, workers=2, progress=False) == (2, [])
            assert all(pc.on_disk(v, target) for v in vs) and len(pc._THE_FORKER) == 1
            if k == 0:
                first = pc._THE_FORKER[0]
        assert pc._THE_FORKER[0] is first and first.alive()
        assert not pc.on_disk(calls[0][0], target)  # cache1 holds only what the second call compiled
        first.process.kill()
        first.process.wait()
        assert pc.compile_variants(calls[2], target, workers=2, progress=False) == (2, [])
        assert pc._THE_FORKER[0] is not first and all(pc.on_disk(v, target) for v in calls[2])
    finally:
        for forker in pc._THE_FORKER:
            forker.close()


def test_a_variant_that_fails_is_reported_and_the_others_compile(private_cache):
    target = _hopper()
    good, bad = _variant(16), _variant(16, bn=6)  # tl.arange needs a power of two: Triton refuses BN=6
    n, failed = pc.compile_variants([bad, good], target, workers=2, progress=False)
    assert n == 2 and [v for v, _ in failed] == [bad]
    assert "power of 2" in failed[0][1] or "arange" in failed[0][1]
    assert pc.on_disk(good, target) and not pc.on_disk(bad, target)


def test_the_options_a_launch_reports_give_a_worker_the_launchs_cache_key():
    """A worker compiles from the options Triton's hook reports (as JSON) what the launch would compile from its
    parsed options: the same on-disk cache entry, so the launch finds the worker's binary."""
    import inspect

    from triton.compiler.compiler import get_cache_invalidating_env_vars, get_cache_key, make_backend
    from triton.runtime.jit import serialize_specialization_data

    v, target = _variant(16), _hopper()
    backend = make_backend(target)
    launched = backend.parse_options({"num_warps": 4, "num_stages": 3})  # as the JIT's binder parses a launch's
    args = [v.name, v.signature, v.constexprs, v.attrs, launched, "key", target]
    reported = pc._options_from(serialize_specialization_data(*args[:len(inspect.signature(
        serialize_specialization_data).parameters)]))
    src = pc._source(v)

    def key(options):
        return get_cache_key(src, backend, backend.parse_options(dict(options, **src.parse_options())),
                             get_cache_invalidating_env_vars())

    assert key(reported) == key(launched.__dict__)
    assert key(reported) != key(dict(reported, num_warps=8))  # the key does depend on the options


def test_workloads_are_checked():
    with pytest.raises(ValueError, match="grad='weight'"):
        pc.Workload(8, "weight")
    with pytest.raises(ValueError, match="at least one code"):
        pc.Workload(0)


def test_nothing_to_do_on_the_cpu():
    G = tiny_generator("T", resolution=32)
    report = pc.precompile(G, [pc.Workload(2)], progress=False)
    assert report.variants == 0 and "nothing to do" in repr(report)


def test_stages_precompile_unless_turned_off():
    from v2s_nb.stylegan3 import fast_config

    G = tiny_generator("T", resolution=32)
    assert fast_config.FastConfig().precompile_workers == -1  # on by default: one process per CPU
    with fast_config.override(precompile_workers=0):
        assert pc.ensure_compiled(G, [pc.Workload(2)], progress=False) is None
    with fast_config.override(precompile_workers=-1):  # on, but a CPU generator has no kernels to compile
        assert pc.ensure_compiled(G, [pc.Workload(2)], progress=False) is None
    with pytest.raises(ValueError, match="precompile_workers"):
        fast_config.FastConfig(precompile_workers=-2)
    assert fast_config.FastConfig.from_env({"V2S_NB_PRECOMPILE_WORKERS": "0"}).precompile_workers == 0
    assert 1 <= pc.default_workers() <= pc.MAX_WORKERS


def test_batch_sizes_of_a_clip():
    assert pc.batch_sizes(160, 8) == [8]
    assert pc.batch_sizes(21, 8) == [5, 8]
    assert pc.batch_sizes(3, 8) == [3]


@requires_cuda
@pytest.mark.parametrize("cfg", ["R", "T"])
def test_after_precompiling_every_variant_of_the_calls_is_on_disk(cfg, private_cache):
    from triton.runtime.driver import driver

    G = tiny_generator(cfg, resolution=64).cuda()
    loads = [pc.Workload(2), pc.Workload(2, "ws"), pc.Workload(1, "weights"), pc.Workload(2, force_fp32=True)]
    target = driver.active.get_current_target()
    before = pc.collect(G, loads)
    assert before and not any(pc.on_disk(v, target) for v in before)
    report = pc.precompile(G, loads, workers=2, progress=False)
    assert report.failed == [] and report.compiled == len(before)
    assert all(pc.on_disk(v, target) for v in pc.collect(G, loads))
    # the dry run left the generator as it was: no gradients wanted, none kept, and nothing it computed (its
    # launches skipped) kept for later calls: the same images as a fresh copy that never had a dry run
    assert not any(p.requires_grad or p.grad is not None for p in G.parameters())
    ws = G.mapping.w_avg[None, None].expand(2, G.num_ws, -1)
    with torch.no_grad():
        img, img_fresh = G.synthesis(ws), copy.deepcopy(G).synthesis(ws)
    assert torch.isfinite(img).all() and torch.equal(img, img_fresh)
