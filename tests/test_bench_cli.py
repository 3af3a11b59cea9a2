"""The benchmark scripts' command lines: a bad value, a missing file or ``--device cuda`` without a CUDA GPU stops in
argparse (exit status 2, one ``error:`` line naming the flag and what it takes) before any benchmark runs, instead of a
traceback from deep inside the run; ``--help`` shows each script's docstring."""

import functools
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, load_benchmark

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a CUDA GPU")


def _run(script, *args):
    """The script as a command (a new Python: about 3 s of imports each, so kept to the audited command lines)."""
    return subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


@functools.lru_cache(maxsize=None)
def _module(script):
    return load_benchmark(script.removesuffix(".py"))


def _main(script, args, capsys):
    """The script's ``main(args)`` in this process (what its command line runs, without the Python start-up)."""
    with pytest.raises(SystemExit) as exit_info:
        _module(script).main(list(args))
    return subprocess.CompletedProcess(script, exit_info.value.code, "", capsys.readouterr().err)


def _one_error_line(proc):
    """The one ``error:`` line of an argparse refusal (everything before it is the usage block)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.rstrip("\n").splitlines()
    assert lines and ": error: " in lines[-1], proc.stderr
    assert all(line.startswith(("usage:", " ")) for line in lines[:-1]), proc.stderr
    return lines[-1]


COUNTS = [  # (script, args, the flag the message names, the allowed range it states)
    ("bench_metrics.py", ["--sizes", "64", "--frames", "0", "--dims", "2"], "--frames", ">= 1"),
    ("bench_metrics.py", ["--sizes", "0", "--frames", "1", "--dims", "2"], "--sizes", ">= 1"),
    ("bench_metrics.py", ["--sizes", "64", "--frames", "1", "--dims", "0"], "--dims", ">= 1"),
    ("bench_landmarks.py", ["--sizes", "64", "--frames", "-1"], "--frames", ">= 1"),
    ("bench_landmarks.py", ["--upsample", "-1"], "--upsample", ">= 0"),
    ("bench_notebook.py", ["notebooks/04_reenactment.ipynb", "--runs", "0"], "--runs", ">= 1"),
    ("bench_reenact.py", ["--tiny", "--frames", "0"], "--frames", ">= 1"),
    ("bench_reenact.py", ["--tiny", "--batch", "0"], "--batch", ">= 1"),
    ("bench_generator.py", ["--device", "cpu", "--batch", "0"], "--batch", ">= 1"),
    ("bench_invert.py", ["--device", "cpu", "--seq-batch", "0"], "--seq-batch", ">= 1"),
    ("bench_pipeline.py", ["--device", "cpu", "--frames", "0"], "--frames", ">= 1"),
    ("bench_pipeline.py", ["--device", "cpu", "--memory-cap-gib", "0"], "--memory-cap-gib", "> 0"),
    ("bench_pose_encoding.py", ["--device", "cpu", "--tiny", "--steps", "0"], "--steps", ">= 1"),
    ("bench_pose_encoding.py", ["--device", "cpu", "--tiny", "--batch", "1", "0"], "--batch", ">= 1"),
    ("bench_discovery.py", ["--n", "0"], "--n", ">= 1"),
    ("bench_vs_nvidia.py", ["--device", "cpu", "--iters", "0"], "--iters", ">= 1"),
    ("bench_conv.py", ["--batch", "0"], "--batch", ">= 1"),
    ("bench_lrelu_backward.py", ["--iters", "0"], "--iters", ">= 1"),
    ("bench_lrelu_forms.py", ["--reps", "0"], "--reps", ">= 1"),
    ("memory_peak.py", ["--top", "0"], "--top", ">= 1"),
    ("profile_synthesis.py", ["--device", "cpu", "--batch", "0"], "--batch", ">= 1"),
    ("kernel_resources.py", ["--resolution", "0"], "--resolution", ">= 1"),
    ("kernel_fit.py", ["--resolution", "0"], "--resolution", ">= 1"),
    ("bench_face_stage.py", ["--frames", "0"], "--frames", ">= 1"),
]


@pytest.mark.parametrize("script, args, flag, allowed", COUNTS, ids=[f"{c[0]} {c[2]}" for c in COUNTS])
def test_a_non_positive_count_or_size_is_one_line_naming_the_flag(script, args, flag, allowed, capsys):
    line = _one_error_line(_main(script, args, capsys))
    assert f"argument {flag}:" in line and allowed in line


CUDA_FLAGS = [  # scripts with --device: cuda is refused up front without a GPU
    ("bench_landmarks.py", ["--sizes", "64", "--frames", "1", "--detectors", "hog", "--pose-sizes"]),
    ("bench_reenact.py", ["--tiny"]),
    ("bench_generator.py", ["--tiny"]),
    ("bench_invert.py", ["--tiny"]),
    ("bench_pipeline.py", ["--tiny"]),
    ("bench_pose_encoding.py", ["--tiny"]),
    ("bench_vs_nvidia.py", []),
    ("profile_synthesis.py", ["--tiny"]),
]


@NO_CUDA
@pytest.mark.parametrize("script, args", CUDA_FLAGS, ids=[c[0] for c in CUDA_FLAGS])
def test_device_cuda_without_a_gpu_is_one_line(script, args, capsys):
    line = _one_error_line(_main(script, [*args, "--device", "cuda"], capsys))
    assert "argument --device:" in line and "no CUDA GPU" in line and "--device cpu" in line


def test_a_memory_cap_off_cuda_is_one_line(capsys):
    line = _one_error_line(_main("bench_pipeline.py", ["--device", "cpu", "--memory-cap-gib", "15"], capsys))
    assert "--memory-cap-gib needs --device cuda" in line


def test_an_unknown_device_is_one_line(capsys):
    line = _one_error_line(_main("bench_landmarks.py", ["--device", "gpu0"], capsys))
    assert "argument --device:" in line and "not a torch device" in line


GPU_ONLY = [("gpu_check.py", []), ("bench_conv.py", []), ("bench_lrelu_backward.py", []),
            ("bench_lrelu_forms.py", []), ("bench_discovery.py", ["--setups", "cuda-1024"])]


@NO_CUDA
@pytest.mark.parametrize("script, args", GPU_ONLY, ids=[c[0] for c in GPU_ONLY])
def test_a_gpu_only_benchmark_without_a_gpu_says_so_in_one_line(script, args, capsys):
    assert "needs a CUDA GPU" in _one_error_line(_main(script, args, capsys))


def test_gpu_check_help_shows_its_docstring_and_runs_nothing():
    proc = _run("gpu_check.py", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "fp16-vs-fp32 agreement" in proc.stdout and "FIXTURES" in proc.stdout and not proc.stderr


def test_gpu_check_refuses_a_missing_fixtures_folder(tmp_path, capsys):
    line = _one_error_line(_main("gpu_check.py", [str(tmp_path / "nope")], capsys))
    assert "fixtures" in line and "no such folder" in line


def test_bench_reenact_without_a_benchmark_flag_says_what_to_pass(capsys):
    line = _one_error_line(_main("bench_reenact.py", [], capsys))
    assert all(flag in line for flag in ("--tiny", "--r1024", "--demo", "--cpu-ops"))


def test_bench_reenact_help_shows_its_docstring(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _module("bench_reenact.py").main(["--help"])
    assert exit_info.value.code == 0 and "time per re-rendered frame" in capsys.readouterr().out.replace("\n", " ")


def test_bench_notebook_missing_notebook_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope.ipynb"
    line = _one_error_line(_main("bench_notebook.py", [str(missing), "--runs", "1"], capsys))
    assert "argument notebook:" in line and str(missing) in line and "no such file" in line


AUDITED = [  # the audit's command lines, run as commands: (script, args, what the one line says)
    ("bench_metrics.py", ["--sizes", "64", "--frames", "0", "--dims", "2"], ["argument --frames:", ">= 1"]),
    ("bench_landmarks.py", ["--sizes", "64", "--frames", "1", "--detectors", "hog", "--pose-sizes", "--device", "cuda"],
     ["argument --device:", "no CUDA GPU"]),
    ("bench_notebook.py", ["/tmp/nope-v2s-nb.ipynb", "--runs", "1"], ["argument notebook:", "no such file"]),
    ("bench_reenact.py", [], ["--tiny", "--r1024", "--demo", "--cpu-ops"]),
    ("gpu_check.py", [], ["needs a CUDA GPU"]),
]


@NO_CUDA
@pytest.mark.parametrize("script, args, says", AUDITED, ids=[c[0] for c in AUDITED])
def test_the_audited_command_lines_exit_2_with_one_line(script, args, says):
    line = _one_error_line(_run(script, *args))
    assert all(s in line for s in says), line


def test_pose_encoding_benchmark_runs_on_the_cpu_and_writes_its_rows(tmp_path, capsys):
    """bench_pose_encoding.py with the tiny generator and the stand-in P_r: one row per batch size, each with the
    generator's, the regressor's and the whole step's time (positive), as printed and as JSON."""
    out = tmp_path / "rows.jsonl"
    _module("bench_pose_encoding.py").main(["--device", "cpu", "--tiny", "--pose-input", "image", "--batch", "1",
                                            "2", "--steps", "2", "--json", str(out)])
    printed = capsys.readouterr().out
    record = json.loads(out.read_text().splitlines()[-1])
    assert [r["batch"] for r in record["rows"]] == [1, 2] and record["resolution"] == 64
    assert all(r[k] > 0 for r in record["rows"] for k in ("generator", "regressor", "step"))
    assert "step / sum" in printed and len([ln for ln in printed.splitlines() if ln.strip()[:1].isdigit()]) == 2


def test_face_stage_benchmark_measures_a_short_clip(capsys):
    """bench_face_stage.py on a tiny clip: the stage ran on every frame, in a process of its own, on this checkout."""
    _module("bench_face_stage.py").main(["--frames", "3", "--width", "640", "--height", "512", "--resolution", "64",
                                         "--baseline"])  # a face of ~90 px: dlib's HOG finds it without upsampling
    out = capsys.readouterr().out
    assert "faces stage, 3 frames of 640x512 -> 64 px crops:" in out and str(REPO / "v2s_nb") in out
    assert "the whole decoded video: 0.00 GiB" in out


@pytest.mark.slow
def test_kernel_fit_lists_the_shared_memory_of_a_steps_kernels(tmp_path):
    """kernel_fit.py records the Triton launches of T's training step on the CPU (under the interpreter, in a child
    process) into a file, then compiles each from that file for a GPU (as it does under another Triton release): the
    training forward, the codes backward and the inference forward's transposes appear with their KiB."""
    pytest.importorskip("triton")
    script, launches = str(REPO / "benchmarks" / "kernel_fit.py"), tmp_path / "launches.json"
    r = subprocess.run([sys.executable, script, "--cfg", "T", "--resolution", "256", "--save-launches", str(launches)],
                       capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert r.returncode == 0 and launches.is_file() and not r.stdout.strip(), r.stderr[-3000:]
    r = subprocess.run([sys.executable, script, "--cfg", "T", "--launches", str(launches), "--arch", "90"],
                       capture_output=True, text=True, cwd=REPO, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SCALE=True" in "".join(ln for ln in r.stdout.splitlines() if "_to_nhwc_kernel" in ln)  # as on CUDA
    rows = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith("T ")}
    for kernel in ("_fused_train_kernel", "_fused_backward_codes_kernel", "_modulation_kernel"):
        kib = float(rows[kernel].split()[3].rstrip("!"))  # T, kernel, launches, KiB for the first --arch
        assert 0 <= kib <= 227, rows[kernel]
