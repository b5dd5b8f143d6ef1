"""Evaluation time on 1 process against N processes, same machine, same run.

    .venv/bin/python tests/benchmarks/bench_eval_processes.py                     # demo model, 1 vs 2
    .venv/bin/python tests/benchmarks/bench_eval_processes.py --model builtin:tiny --config configs/tiny.yaml

Each configuration runs ``cptift eval`` (under torchrun for N > 1) on the same
prepared suites, with the machine's cores split evenly between the ranks
(OMP_NUM_THREADS = cores / N), and reports the evaluation time that
``eval.json`` records (model loaded, start-up excluded) and the ratio to the
1-process baseline; it also checks that the metrics agree. Not collected by
pytest; figures go to docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run_eval(nproc: int, args, run_dir: Path, out: Path) -> float:
    cmd = [str(BIN / "cptift"), "eval", args.config, f"run.output_dir={run_dir}", "--model", args.model,
           "--out", str(out), f"evals.max_items={args.max_items}", "tracking.wandb.mode=disabled"]
    if nproc > 1:
        cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", str(nproc), "--no-python", *cmd]
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads or max(1, (os.cpu_count() or 1) // nproc))}
    start = time.time()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--max-items", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="threads per rank (default: cores / processes)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir, results = Path(tmp) / "run", {}
        for nproc in args.processes:
            out = Path(tmp) / f"eval-{nproc}.json"
            wall = run_eval(nproc, args, run_dir, out)
            results[nproc] = (json.loads(out.read_text()), wall)
    base = results[args.processes[0]][0]
    print(f"model={args.model} config={args.config} max_items={args.max_items} cores={os.cpu_count()}")
    for nproc, (result, wall) in results.items():
        same = [round(m["value"], 4) for m in result["metrics"]] == [round(m["value"], 4) for m in base["metrics"]]
        ratio = result["seconds"] / base["seconds"]
        print(f"{nproc} process(es): eval {result['seconds']:6.1f} s  x{ratio:.2f} vs 1 process  "
              f"(wall incl. start-up {wall:5.1f} s)  metrics equal to 1 process: {same}")
        for a, b in zip(base["metrics"], result["metrics"]):
            if round(a["value"], 4) != round(b["value"], 4):
                print(f"    {a['suite']}/{a['name']}: {a['value']} (1 process) vs {b['value']}")


if __name__ == "__main__":
    main()
