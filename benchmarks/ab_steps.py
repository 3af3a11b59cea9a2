"""bench_generator.py's timings of two or more checkouts of this repository on one machine, in alternating
processes: what a change did to the speed, with the spread between processes in view.

    mkdir /tmp/before && git archive 5939112 | tar -x -C /tmp/before      # or: git worktree add --detach ...
    python benchmarks/ab_steps.py --trees /tmp/before . --rounds 2 -- \\
        --cfg T R --batch 8 --dtype mixed --modes ws weights --iters 5 --warmup 1 --device cuda

Each round runs every tree's own ``benchmarks/bench_generator.py`` in a fresh process (that tree first on the
path, the arguments after ``--`` passed on, results through its ``--json``), the trees in turn. Printed per
configuration (cfg, resolution, batch, dtype, impl, mode): each tree's ms per call in every round, its median, the
median against the first tree's, and the largest peak memory. The trees' benchmark scripts must know ``--json``
(every version since the training-step figures began does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

KEY = ("cfg", "resolution", "batch", "dtype", "impl", "mode")


def run_tree(tree: Path, bench_args, json_path: Path, python=sys.executable):
    """One process of ``tree``'s bench_generator.py with ``bench_args``; its JSON lines in ``json_path``. Raises
    RuntimeError with the process's last output where it fails."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))
    r = subprocess.run([python, str(tree / "benchmarks" / "bench_generator.py"), *bench_args, "--json",
                        str(json_path)], cwd=tree, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{tree}: bench_generator.py stopped with exit code {r.returncode}:\n"
                           + (r.stdout + r.stderr)[-3000:])
    return [json.loads(line) for line in json_path.read_text().splitlines() if line.strip()]


def collect(trees, bench_args, rounds, runner=run_tree):
    """{configuration: {tree index: [(ms per call, peak GiB) per round]}} from ``rounds`` rounds of every tree in
    turn (``runner(tree, bench_args, json_path)`` returns the JSON rows of one process)."""
    table: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            for t, tree in enumerate(trees):
                path = Path(tmp) / f"round{r}_tree{t}.jsonl"
                for row in runner(tree, bench_args, path):
                    key = tuple(row.get(k) for k in KEY)
                    table.setdefault(key, {}).setdefault(t, []).append((row["ms_per_call"], row["peak_gib"]))
    return table


def report(table, trees) -> str:
    """The table as text: per configuration one line per tree."""
    lines = []
    for key, per_tree in table.items():
        lines.append(" ".join(f"{k} {v}" for k, v in zip(KEY, key) if v is not None))
        base = statistics.median(ms for ms, _ in per_tree[0]) if 0 in per_tree else None
        for t, tree in enumerate(trees):
            runs = per_tree.get(t)
            if not runs:
                lines.append(f"  {tree}: no result")
                continue
            med = statistics.median(ms for ms, _ in runs)
            ratio = f"  x{med / base:.3f} of the first" if base and t else ""
            lines.append(f"  {tree}: " + " / ".join(f"{ms:.1f}" for ms, _ in runs) + f" ms, median {med:.1f}"
                         + ratio + f", peak {max(p for _, p in runs):.2f} GiB")
    return "\n".join(lines)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    bench_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                usage="%(prog)s --trees DIR DIR [DIR ...] [--rounds N] -- BENCH_GENERATOR_ARGS")
    p.add_argument("--trees", nargs="+", required=True, type=Path,
                   help="checkouts of this repository (the first is the one the others are compared with)")
    p.add_argument("--rounds", type=int, default=2, help="processes per tree, the trees in turn (default 2)")
    args = p.parse_args(own)
    missing = [str(t) for t in args.trees if not (t / "benchmarks" / "bench_generator.py").is_file()]
    if missing:
        p.error(f"not a checkout of this repository (no benchmarks/bench_generator.py): {', '.join(missing)}; "
                f"make one with: mkdir DIR && git archive REF | tar -x -C DIR")
    if len(args.trees) < 2 or args.rounds < 1:
        p.error("give two trees or more and at least one round")
    trees = [t.resolve() for t in args.trees]
    try:
        table = collect(trees, bench_args, args.rounds)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(report(table, trees))
    return 0


if __name__ == "__main__":
    sys.exit(main())
