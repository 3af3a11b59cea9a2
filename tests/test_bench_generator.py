"""benchmarks/bench_generator.py's options that need no GPU: ``--codes-tiles`` parsed into fast_ops.CODES_TILES (a
wrong entry refused in one line that shows the form), ``--codes-order`` setting fast_ops.CODES_COLS_FIRST."""

import pytest
import torch

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_generator")


def test_codes_tiles_entries_name_fp16_layers_by_upsampling(bench):
    assert bench.codes_tiles(["2:64", "4:128"]) == {(torch.float16, 2): (64,), (torch.float16, 4): (128,)}
    assert bench.codes_tiles([]) == {}


@pytest.mark.parametrize("entry", ["64", "2:32", "3:64", "2:x"])
def test_a_wrong_codes_tiles_entry_is_one_line_naming_the_form(bench, entry, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--device", "cpu", "--codes-tiles", entry])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--codes-tiles" in err[-1] and entry in err[-1]


def test_codes_order_sets_the_codes_backwards_order(bench, monkeypatch, capsys):
    """``--codes-order rows`` turns fast_ops.CODES_COLS_FIRST off for the run (and says so), then times as usual."""
    from v2s_nb.stylegan3 import fast_ops

    monkeypatch.setattr(fast_ops, "CODES_COLS_FIRST", True)
    bench.main(["--device", "cpu", "--tiny", "--cfg", "T", "--resolution", "16", "--batch", "1", "--iters", "1",
                "--warmup", "0", "--codes-order", "rows"])
    out = capsys.readouterr().out
    assert fast_ops.CODES_COLS_FIRST is False
    assert "# fast_ops.CODES_COLS_FIRST: False" in out and "forward" in out.splitlines()[-1]
