"""benchmarks/memory_peak.py's replay of an allocation trace (the peak and what is alive at it), on a made-up trace
in the format of torch.cuda.memory._snapshot(); and its refusal without a GPU."""

import pytest
import torch

from conftest import REPO, load_benchmark

GIB = 2 ** 30


@pytest.fixture(scope="module")
def mp():
    return load_benchmark("memory_peak")


def _frames(path, line):
    return [{"filename": "/usr/lib/python3/site-packages/torch/autograd/function.py", "line": 1, "name": "apply"},
            {"filename": str(REPO / path), "line": line, "name": "backward"}][::-1]


def test_peak_and_the_blocks_alive_at_it(mp):
    a, b = _frames("v2s_nb/stylegan3/fast_layer.py", 10), _frames("v2s_nb/stylegan3/fast_ops.py", 20)
    events = [dict(action="alloc", addr=1, size=2 * GIB, frames=a),
              dict(action="alloc", addr=2, size=1 * GIB, frames=b),
              dict(action="free_requested", addr=1, size=2 * GIB),  # not yet returned: still counted
              dict(action="alloc", addr=3, size=1 * GIB, frames=b),  # the peak: base 1 + 2 + 1 + 1
              dict(action="free_completed", addr=1, size=2 * GIB),
              dict(action="free_completed", addr=99, size=1 * GIB),  # a block from before the trace
              dict(action="alloc", addr=4, size=2 * GIB, frames=a)]  # 1 + 1 + 1 - 1 + 2 = 4 < 5
    peak, live = mp.peak_from_trace(events, base=1 * GIB)
    assert peak == 5 * GIB and sorted(live) == [1, 2, 3]
    rows = mp.grouped(live)
    assert [(r[0], r[1], r[2]) for r in rows] == [("v2s_nb/stylegan3/fast_layer.py:10 (backward)", 1, 2 * GIB),
                                                  ("v2s_nb/stylegan3/fast_ops.py:20 (backward)", 2, 2 * GIB)]
    printed = []
    assert mp.report({"device_traces": [events]}, 1 * GIB, out=printed.append) == 5 * GIB
    assert printed[0].startswith("peak 5.00 GiB: 1.00 allocated before the step, 4.00 by it")
    assert "fast_layer.py:10" in printed[2] and "(2.00)" in printed[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_without_a_gpu_it_says_so(mp, capsys):
    with pytest.raises(SystemExit) as exit_info:
        mp.main(["--cfg", "R"])
    assert exit_info.value.code == 2 and "needs a CUDA GPU" in capsys.readouterr().err
