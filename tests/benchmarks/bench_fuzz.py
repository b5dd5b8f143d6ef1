"""Fuzzing at scale: the properties of tests/test_fuzz*.py on 10,000 generated cases in all.

    .venv/bin/python tests/benchmarks/bench_fuzz.py              # 10,000 cases, about 2 minutes on 2 cores
    .venv/bin/python tests/benchmarks/bench_fuzz.py --scale 0.1  # 1,000 cases, a smoke run
    .venv/bin/python tests/benchmarks/bench_fuzz.py --seed 7     # other cases than the derandomized default
    .venv/bin/python tests/benchmarks/bench_fuzz.py --only parquet  # the targets whose name holds "parquet"

The test module's hypothesis-decorated functions run here under their own
settings (``CASES`` below, times ``--scale``), so the properties are written
once. Derandomized by default: a rerun generates the same cases. Prints, per
target, the cases run, how they ended (a clean result, or which of the
product's errors), the wall time, and any failure with hypothesis's minimal
example; exits 1 if any target failed (a crash of the interpreter itself
prints its Python stack and ends the run). Not collected by pytest.
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS.parent), str(TESTS)]

# Cases per target, 10,000 in all; the datasets-backed readers cost 20-50 ms a case, the rest less.
CASES = {
    "test_config_loader_returns_a_config_or_a_config_error": 1500,
    "test_overrides_return_a_config_or_a_config_error": 1500,
    "test_text_files_give_one_document_or_one_problem": 1000,
    "test_jsonl_and_json_keep_every_good_row_and_report_every_bad_one": 2000,
    "test_parquet_keeps_every_good_row_and_reports_every_bad_one": 1000,
    "test_datasets_folders_keep_every_good_row_and_report_every_bad_one": 600,
    "test_instruction_reader_returns_records_or_a_data_error": 1000,
    "test_task_reader_returns_items_or_a_data_error": 800,
    "test_chat_rendering_masks_or_raises_a_product_error": 600,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every target's case count")
    parser.add_argument("--seed", type=int, default=None, help="random cases from this seed (default: derandomized)")
    parser.add_argument("--only", default="", help="run the targets whose test name contains this")
    args = parser.parse_args()
    faulthandler.enable()  # a reader that crashes the interpreter (SIGBUS, SIGSEGV) still shows where
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as scratch:
        return run(args, scratch)


def run(args: argparse.Namespace, scratch: str) -> int:
    os.environ["CPTIFT_CACHE"] = scratch  # the tiny model is built here, never in the user's cache

    import datasets
    from hypothesis import seed, settings

    import test_fuzz
    import test_fuzz_config
    import fuzzing
    from stages.modeling import TINY, load_tokenizer, resolve_model

    datasets.config.HF_DATASETS_CACHE = Path(scratch) / "hf"  # as the test module's fixture does
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its log of each unreadable file
    tokenizer = load_tokenizer(resolve_model(TINY))

    failures, start = [], time.perf_counter()
    print(f"{'target':<44} {'cases':>6} {'wall s':>7}  result")
    for name, count in ((n, c) for n, c in CASES.items() if args.only in n):
        test = settings(settings.get_profile("ci"), max_examples=max(1, round(count * args.scale)),
                        derandomize=args.seed is None)(getattr(test_fuzz_config if hasattr(test_fuzz_config, name) else test_fuzz, name))
        if args.seed is not None:
            test = seed(args.seed)(test)
        runs, outcomes = Counter(fuzzing.RUNS), Counter(fuzzing.OUTCOMES)
        target_start = time.perf_counter()
        try:
            test(tiny_tokenizer=tokenizer) if "chat" in name else test()
            status = "ok"
        except BaseException as exc:  # a failed property: report it and go on with the next target
            failures.append((name, exc))
            status = "FAILED"
        wall = time.perf_counter() - target_start
        (target, cases), = (fuzzing.RUNS - runs).items()  # the counter this test adds to
        print(f"{target:<44} {cases:>6} {wall:>7.1f}  {status}")
        for (_, how), seen in sorted((fuzzing.OUTCOMES - outcomes).items(), key=lambda kv: -kv[1]):
            print(f"    {how:<40} {seen:>6}")
    print(f"total: {sum(fuzzing.RUNS.values())} cases in {time.perf_counter() - start:.0f} s "
          f"({'derandomized' if args.seed is None else f'seed {args.seed}'}), {len(failures)} target(s) failed")
    for name, exc in failures:
        print(f"\nFAILED {name}:")
        print("".join(traceback.format_exception(exc))[-4000:])
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
