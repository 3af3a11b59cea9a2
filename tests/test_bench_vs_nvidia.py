"""benchmarks/bench_vs_nvidia.py without NVIDIA's code: its help, and the one-line errors that name the fix."""

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_vs_nvidia")


def test_help_names_the_nvidia_checkout(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--nvidia-repo" in out and "https://github.com/NVlabs/stylegan3" in out


def test_missing_nvidia_repo_is_one_line_naming_the_fix(bench, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--nvidia-repo" in err and "git clone https://github.com/NVlabs/stylegan3" in err


def test_a_folder_that_is_not_the_checkout_is_refused(bench, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cpu", "--nvidia-repo", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(tmp_path) in err and "training/networks_stylegan3.py" in err
