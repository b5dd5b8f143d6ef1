"""Time one CPT optimizer step under DeepSpeed ZeRO-2 against plain Trainer, same run.

The ``-documents`` row packs a new document every 97 tokens with restarting
``position_ids`` (``cpt.packing: documents``): the cost of keeping documents
apart, against the same rows with attention across them (``stream``).

    .venv/bin/python tests/benchmarks/bench_training_step.py                  # demo model, 2 x 256 tokens
    .venv/bin/python tests/benchmarks/bench_training_step.py --model builtin:tiny --steps 10

Each configuration trains ``--steps`` steps on the same random blocks in a
fresh subprocess (DeepSpeed keeps process-global state) and reports the median
step time after the first (warm-up) step, plus the ratio to the baseline
(plain Trainer with bf16 autocast). Not collected by pytest (no ``test_``
prefix): timings do not belong in unit tests. Figures: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = {  # name -> (deepspeed json, bf16, packing mode)
    "plain-bf16 (baseline)": ("", True, "stream"),
    "zero2-bf16": ("configs/deepspeed/zero2.json", True, "stream"),
    "zero2-bf16-documents": ("configs/deepspeed/zero2.json", True, "documents"),
    "zero2-fp32": ("configs/deepspeed/zero2.json", False, "stream"),
}

CHILD = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import torch
from transformers import TrainerCallback, default_data_collator
from corpora.packing import cpt_block
from stages.config import TrainConfig
from stages.modeling import load_model, load_tokenizer, resolve_model
from stages.training import StageRun, train_stage
model_spec, ds, bf16, steps, seq, mb, out, mode = sys.argv[1:9]
path = resolve_model(model_spec)
tok = load_tokenizer(path)
class Blocks(torch.utils.data.Dataset):  # random tokens, a document starting every 97 tokens
    def __len__(self): return int(steps) * int(mb)
    def __getitem__(self, i):
        ids = np.random.default_rng(i).integers(0, len(tok), size=int(seq))
        return {k: torch.from_numpy(v) for k, v in cpt_block(ids, np.arange(0, int(seq), 97), mode).items()}
times = []
class Timer(TrainerCallback):
    def on_step_begin(self, *a, **k): self.t = time.perf_counter()
    def on_step_end(self, *a, **k): times.append(time.perf_counter() - self.t)
cfg = TrainConfig(max_steps=int(steps), seq_len=int(seq), micro_batch_size=int(mb), warmup_steps=1, save_steps=0,
                  deepspeed=ds)
run = StageRun("cpt", load_model(path, "float32"), tok, Blocks(), None, default_data_collator,
               Path(out), 0, bf16 == "1")
train_stage(cfg, run, [Timer()])
print("TIMES", json.dumps(times))
"""


def time_config(args, ds: str, bf16: bool, mode: str) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", CHILD, args.model, ds, "1" if bf16 else "0", str(args.steps),
               str(args.seq_len), str(args.micro_batch_size), tmp, mode]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("TIMES")), None)
    if line is None:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(line[6:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="builtin:smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--micro-batch-size", type=int, default=2)
    args = parser.parse_args()
    start, results = time.time(), {}
    for name, (ds, bf16, mode) in CONFIGS.items():
        results[name] = statistics.median(time_config(args, ds, bf16, mode)[1:])
    base = results["plain-bf16 (baseline)"]
    tokens = args.seq_len * args.micro_batch_size
    print(f"model={args.model} tokens/step={tokens} steps={args.steps} (median after step 1)")
    for name, secs in results.items():
        print(f"{name:<24} {secs:6.2f} s/step  {tokens / secs:7.0f} tok/s  x{secs / base:.2f} vs baseline")
    print(f"benchmark wall time {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
