"""The demo's forgetting report, checked: each headline effect with its interval and verdict, and the time.

    .venv/bin/python tests/benchmarks/bench_demo.py --run        # cptift run configs/demo.yaml, timed, then check
    .venv/bin/python tests/benchmarks/bench_demo.py              # check a finished runs/demo

The headline effects: domain perplexity after CPT, domain question answering
after IFT, and every general metric after CPT (where forgetting shows). Each
must carry a 95% delta interval and a verdict (improved / forgot / no
significant change): an effect the suites cannot resolve is reported as such,
never left without an interval. The pipeline must finish within 15 minutes
(the sum of the steps' own times, or the measured wall time with ``--run``).
Not collected by pytest; figures go to docs/forgetting.md and docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from stages.intervals import VERDICTS

ROOT = Path(__file__).resolve().parents[2]
LIMIT_S = 15 * 60
HEADLINES = [("domain", "perplexity", "cpt"), ("domain", "qa/accuracy_norm", "ift")]  # + every general metric


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--run", action="store_true", help="run the demo first (into --run-dir), timed")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    wall = None
    if args.run:
        start = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "cptift"), "run", "configs/demo.yaml",
                        f"run.output_dir={run_dir}"], cwd=ROOT, check=True)
        wall = time.perf_counter() - start
    steps = {p.stem: json.loads(p.read_text())["seconds"] for p in sorted((run_dir / "steps").glob("*.json"))}
    report = json.loads((run_dir / "report" / "forgetting.json").read_text())
    rows = {(m["suite"], m["name"]): m for m in report["metrics"]}
    wanted = HEADLINES + [(s, n, "cpt") for s, n in rows if s == "general"]
    print(f"{'suite':<8} {'metric':<24} {'ckpt':<4} {'base':>8} {'value':>8} {'delta [95%]':>28}  verdict")
    failures = []
    for suite, name, ckpt in wanted:
        m = rows.get((suite, name))
        if m is None:
            failures.append(f"{suite}/{name} is not in the report")
            continue
        interval, verdict = m["delta_interval"].get(ckpt), m["verdict"].get(ckpt)
        shown = "none" if interval is None else f"{m['delta'][ckpt]:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]"
        print(f"{suite:<8} {name:<24} {ckpt:<4} {m['values']['base']:>8.3f} {m['values'][ckpt]:>8.3f} "
              f"{shown:>28}  {verdict}")
        if interval is None or verdict not in set(VERDICTS) - {"no interval"}:
            failures.append(f"{suite}/{name} after {ckpt} has no interval or verdict")
    total = wall if wall is not None else sum(steps.values())
    how = "measured wall time" if wall is not None else "sum of the steps' seconds"
    print(f"steps: {', '.join(f'{k} {v:.0f} s' for k, v in steps.items())}; {how}: {total:.0f} s")
    checks = [("every headline effect has its interval and a verdict", not failures, "; ".join(failures) or "ok"),
              (f"the demo within {LIMIT_S // 60} minutes", total <= LIMIT_S, f"{total / 60:.1f} min ({how})")]
    for label, ok, detail in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {label}  ({detail})")
    return 0 if all(ok for _, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
