"""Wall time of a tutorial notebook run top to bottom (what its "runs in about ..." sentence states).

    OMP_NUM_THREADS=2 python benchmarks/bench_notebook.py notebooks/04_reenactment.ipynb
    python benchmarks/bench_notebook.py notebooks/04_reenactment.ipynb --param 'checkpoint="tiny"'

Runs the notebook twice with nbclient (kernel ``python3``) in a temporary copy: first with an empty v2s_nb cache
(``V2S_NB_CACHE`` pointed at a new folder: fitted generators and every prepared stage computed), then again with
that cache (what a second run costs). Prints the seconds of each code cell that took 1 s or more and the total of
each run, and the load average before and after (timings on a shared machine are inflated: say so when quoting
them). ``--param NAME=VALUE`` sets a parameter in a cell after the parameters cell.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402  (argparse checks)


def run(notebook: Path, params: list[str], cache: Path) -> float:
    import nbclient
    import nbformat

    os.environ["V2S_NB_CACHE"] = str(cache)  # the kernel inherits it
    work = Path(tempfile.mkdtemp(prefix="bench-nb-"))
    path = work / notebook.name
    shutil.copy(notebook, path)
    nb = nbformat.read(path, as_version=4)
    if params:
        at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(params), id="injected-parameters"))
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=3600, allow_errors=False,
                                     resources={"metadata": {"path": str(work)}})
    t0 = time.perf_counter()
    with client.setup_kernel():
        for i, cell in enumerate(nb.cells):
            t = time.perf_counter()
            client.execute_cell(cell, i)
            dt = time.perf_counter() - t
            if cell.cell_type == "code" and dt >= 1.0:
                first = cell.source.strip().splitlines()[0][:70] if cell.source.strip() else ""
                print(f"  cell {i:2d}: {dt:7.1f} s  {first}", flush=True)
    total = time.perf_counter() - t0
    shutil.rmtree(work, ignore_errors=True)
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("notebook", type=_common.existing_file)
    p.add_argument("--param", action="append", default=[], help="NAME=VALUE (Python), e.g. 'checkpoint=\"tiny\"'")
    p.add_argument("--runs", type=_common.positive_int, default=2,
                   help="1: only the cold run; 2 (default): cold, then cached")
    args = p.parse_args(argv)
    cache = Path(tempfile.mkdtemp(prefix="bench-nb-cache-"))
    print(f"{args.notebook.name}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.1f}")
    try:
        for k in range(args.runs):
            what = "cold (empty cache)" if k == 0 else "again (cache filled by the first run)"
            print(f"{what}:")
            total = run(args.notebook, args.param, cache)
            print(f"  total {total:.1f} s; load average now {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
