"""benchmarks/ab_steps.py: the table from rounds of processes per checkout (a stub runner), a real run of this
checkout against a copy of its last commit (tiny generator on the CPU), and the one-line refusal of a folder that
is not a checkout."""

import shutil
import subprocess

import pytest

from conftest import REPO, load_benchmark


@pytest.fixture(scope="module")
def ab():
    return load_benchmark("ab_steps")


def test_rounds_alternate_trees_and_the_report_gives_medians_and_ratios(ab, tmp_path):
    calls = []

    def runner(tree, bench_args, path):
        calls.append(tree)
        ms = {"a": 10.0, "b": 8.0}[tree] + len(calls)  # each process a little slower: the medians must follow
        return [dict(cfg="T", resolution=1024, batch=8, dtype="mixed", impl=None, mode="ws", ms_per_call=ms,
                     peak_gib=11.0 + len(calls) / 100)]

    table = ab.collect(["a", "b"], ["--cfg", "T"], 3, runner=runner)
    assert calls == ["a", "b"] * 3  # the trees in turn, round after round
    runs = table[("T", 1024, 8, "mixed", None, "ws")]
    assert [ms for ms, _ in runs[0]] == [11.0, 13.0, 15.0] and [ms for ms, _ in runs[1]] == [10.0, 12.0, 14.0]
    text = ab.report(table, ["a", "b"])
    assert "cfg T resolution 1024 batch 8 dtype mixed mode ws" in text
    assert "median 13.0" in text and "median 12.0" in text and f"x{12 / 13:.3f} of the first" in text
    assert "peak 11.06 GiB" in text


@pytest.mark.slow
def test_a_real_run_of_two_checkouts(ab, tmp_path, capsys):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs this repository's git history")
    before = tmp_path / "before"
    before.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(before)], input=archive, check=True)
    code = ab.main(["--trees", str(before), str(REPO), "--rounds", "1", "--", "--cfg", "T", "--resolution", "16",
                    "--batch", "1", "--device", "cpu", "--tiny", "--iters", "1", "--warmup", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "cfg T resolution 16 batch 1 dtype fp32 mode forward" in out
    assert str(before) in out and "of the first" in out


def test_a_folder_that_is_not_a_checkout_is_refused_in_one_line(ab, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ab.main(["--trees", str(tmp_path), str(REPO), "--", "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(tmp_path) in err and "git archive" in err
