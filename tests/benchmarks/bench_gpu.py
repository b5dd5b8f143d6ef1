"""One-shot GPU check: document-aware packing on CUDA SDPA, and 1.1B bf16 training throughput / MFU.

    python3 tests/benchmarks/bench_gpu.py [--quick] [--json out.json]

Self-contained on purpose (the GPU machine has torch, transformers and numpy
only: no deepspeed, flash-attn, datatrove, wandb or internet): it imports only
those and ``corpora.packing`` (numpy + ``corpora.chat``, which is stdlib-only).
Models are random-init ``LlamaConfig`` shapes, so nothing is downloaded.

1. Device facts, and whether ``flash_attn`` imports (expected: no).
2. Packing: 3 documents in one row with restarting ``position_ids`` and no mask
   must each get the logits they get alone (transformers derives a block-diagonal
   mask from the restarts). Controls show the check can fail: plain 0..L-1
   positions, and ``use_cache=True`` (a cache turns the packed-sequence detection
   off; stages/training.py sets ``use_cache=False``).
3. Training tok/s and MFU of a TinyLlama-shaped 1.1B, seq 4096, SDPA, gradient
   checkpointing off and on, and on rows packed with documents (restarting
   position ids: SDPA gets a block-diagonal mask instead of its causal kernel). ``--quick``: tiny everything, CPU smoke test.
Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repo root, for corpora.packing
from corpora.packing import position_ids  # noqa: E402

H200_BF16_PEAK = 989e12  # dense (non-sparse) bf16 FLOP/s of one H200 SXM
TOL = {"fp32": 1e-4, "bf16": 2e-2}


def device_facts(dev: torch.device) -> dict:
    facts = {"torch": torch.__version__, "transformers": transformers.__version__,
             "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu"}
    try:
        import flash_attn  # noqa: F401  (only probing; the project must work without it)
        facts["flash_attn"] = f"present ({flash_attn.__version__})"
    except Exception as e:  # ImportError, or a broken build raising something else
        facts["flash_attn"] = f"absent ({type(e).__name__}: {e})"
    if dev.type == "cuda":  # which SDPA kernels torch may pick (flash needs no mask; masks go to mem_efficient/math)
        facts["sdpa_backends"] = {k: getattr(torch.backends.cuda, f"{k}_sdp_enabled")()
                                  for k in ("flash", "mem_efficient", "cudnn", "math")}
    return facts


def llama(dev: torch.device, **shape) -> LlamaForCausalLM:
    """Random-init Llama built directly on ``dev`` (no CPU copy of a 1.1B model), SDPA attention."""
    cfg = LlamaConfig(max_position_embeddings=8192, use_cache=False, attn_implementation="sdpa", **shape)
    with dev:
        model = LlamaForCausalLM(cfg)
    assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    return model


@torch.no_grad()
def logits(model, ids, pos, use_cache=False) -> torch.Tensor:
    return model(input_ids=ids, position_ids=pos, use_cache=use_cache).logits.float()


def packed_check(dev: torch.device, lengths=(37, 64, 27)) -> dict:
    """Per-document max |logit difference|, packed row vs each document alone, fp32 then bf16."""
    torch.manual_seed(0)
    model = llama(dev, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, vocab_size=1000).eval()
    starts = np.cumsum((0,) + tuple(lengths[:-1]))
    L = sum(lengths)
    ids = torch.randint(0, 1000, (1, L), generator=torch.Generator().manual_seed(1)).to(dev)
    pos = torch.from_numpy(position_ids(L, starts[1:])).unsqueeze(0).to(dev)
    plain = torch.arange(L, device=dev).unsqueeze(0)
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model.to(dtype)  # same weights, rounded: compares like with like within each dtype
        alone = [logits(model, ids[:, s:s + n], plain[:, :n]) for s, n in zip(starts, lengths)]

        def per_doc(full):
            return [float((full[0, s:s + n] - a[0]).abs().max()) for s, n, a in zip(starts, lengths, alone)]

        out[name] = {"packed": per_doc(logits(model, ids, pos)),
                     "control_plain_positions": per_doc(logits(model, ids, plain)),
                     "control_use_cache": per_doc(logits(model, ids, pos, use_cache=True))}
        out[name]["pass"] = max(out[name]["packed"]) <= TOL[name]
    return out


def packed_positions(seq: int, mb: int, mean_doc: int, dev) -> torch.Tensor:
    """Position ids of rows packed with documents of random lengths (mean ``mean_doc``), as CPT packs them."""
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(mb):
        starts = np.cumsum(rng.integers(mean_doc // 4, 2 * mean_doc, size=seq // 16))
        rows.append(position_ids(seq, [int(x) for x in starts if x < seq]))
    return torch.from_numpy(np.stack(rows)).to(dev)


def timed_steps(model, opt, dev, seq, mb, warmup, steps, mean_doc: int = 0) -> dict:
    """Wall time of ``steps`` full optimizer steps (forward, backward, AdamW) after ``warmup`` steps.

    ``mean_doc`` > 0: rows packed with documents (restarting position ids, so a block-diagonal mask)."""
    ids = torch.randint(0, model.config.vocab_size, (mb, seq), device=dev)
    pos = packed_positions(seq, mb, mean_doc, dev) if mean_doc else None

    def step():
        model(input_ids=ids, position_ids=pos, labels=ids, use_cache=False).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):  # first steps allocate optimizer state and pick kernels
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()  # kernels are async: time only when the queue is drained
    dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None  # None: valid JSON
    return {"micro_batch": mb, "seq": seq, "step_s": dt / steps, "tokens_per_s": mb * seq * steps / dt,
            "peak_mem_gib": peak}


def train_bench(dev: torch.device, quick: bool) -> dict:
    if quick:
        shape = dict(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=1000)
        seq, mb0, warmup, steps = 256, 2, 1, 2
    else:  # TinyLlama-1.1B shape
        shape = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, vocab_size=32000)
        seq, mb0, warmup, steps = 4096, 4, 3, 10
    # bf16 on GPU; CPU smoke runs in fp32 (CPU bf16 matmuls are slow or emulated, and MFU is n/a there anyway)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    torch.manual_seed(0)
    model = llama(dev, **shape).to(dtype).train()
    n_total = sum(p.numel() for p in model.parameters())
    # 6N counts matmul weights: everything but the input embedding (a lookup); the untied lm_head is a matmul
    n_flop = n_total - model.get_input_embeddings().weight.numel()
    attn_per_token = 6 * shape["num_hidden_layers"] * shape["hidden_size"] * seq  # 12*l*h*s, halved by causality
    # Pure-bf16 AdamW: moments are bf16 like the params (no fp32 master copy), fused kernel on CUDA
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=dev.type == "cuda")
    dt = str(dtype).replace("torch.", "")
    res = {"params": n_total, "params_6N": n_flop, "dtype": dt,
           "optimizer": f"AdamW(fused={dev.type == 'cuda'}) on {dt} params, {dt} states"
                        + (" (pure bf16: no fp32 master weights)" if dtype == torch.bfloat16 else "")}
    # (name, activation checkpointing, mean document length of packed rows; 0: one causal row)
    for name, ckpt, mean_doc in (("no_ckpt", False, 0), ("ckpt", True, 0), ("packed_docs_ckpt", True, seq // 8)):
        # transformers >= 5.2x renamed gradient_ to activation_checkpointing_* (old names warn); 5.17 may lack them
        prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
        if ckpt:
            getattr(model, f"{prefix}_checkpointing_enable")({"use_reentrant": False})
        else:
            getattr(model, f"{prefix}_checkpointing_disable")()
        mb, r = mb0, None
        while mb >= 1 and r is None:
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            try:
                r = timed_steps(model, opt, dev, seq, mb, warmup, steps, mean_doc)
            except torch.cuda.OutOfMemoryError:
                r = None
            if r is None:  # outside the except, so the traceback's activations are freed first
                opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
                print(f"  OOM at micro-batch {mb} (ckpt={ckpt}); halving", flush=True)
                mb //= 2
        if r is None:
            res[name] = {"error": "OOM at micro-batch 1"}
            continue
        if dev.type == "cuda":
            r["mfu_6N"] = 6 * n_flop * r["tokens_per_s"] / H200_BF16_PEAK
            r["mfu_6N_attn"] = (6 * n_flop + attn_per_token) * r["tokens_per_s"] / H200_BF16_PEAK
        res[name] = r
    return res


def fmt(x, spec=".3g"):
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, seq 256, 2 steps (CPU smoke test)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    t_start = time.perf_counter()

    facts = device_facts(dev)
    print("== 1. device"); [print(f"  {k}: {v}") for k, v in facts.items()]

    print("== 2. packed documents (37, 64, 27 tokens) vs each alone, SDPA on", dev.type)
    pk = packed_check(dev)
    for name, r in pk.items():
        print(f"  {name}: packed per-doc max|diff| {[fmt(d) for d in r['packed']]} -> "
              f"{'PASS' if r['pass'] else 'FAIL'} (tol {TOL[name]:g})")
        print(f"  {name}: control 0..L-1 positions      {[fmt(d) for d in r['control_plain_positions']]}"
              " (docs 2-3 should differ)")
        print(f"  {name}: control use_cache=True         {[fmt(d) for d in r['control_use_cache']]}"
              " (cache disables packed detection)")

    print("== 3. training throughput", "(quick, CPU-sized)" if args.quick else "(TinyLlama-1.1B shape)")
    tr = train_bench(dev, args.quick)
    print(f"  params {tr['params'] / 1e6:,.1f}M, 6N counts {tr['params_6N'] / 1e6:,.1f}M "
          f"(all but input embedding); {tr['optimizer']}")
    print("  MFU_6N = 6*N*tok/s / 989e12;  MFU_6N+attn = (6*N + 6*layers*hidden*seq)*tok/s / 989e12"
          " (with ckpt the hardware does ~8N; both still count 6N)")
    for k in ("no_ckpt", "ckpt", "packed_docs_ckpt"):
        r = tr[k]
        if "error" in r:
            print(f"  {k}: {r['error']}")
            continue
        print(f"  {k:16s} mb {r['micro_batch']} x {r['seq']}: {r['step_s']:.3f} s/step, "
              f"{r['tokens_per_s']:,.0f} tok/s, peak {fmt(r['peak_mem_gib'], '.1f')} GiB, "
              f"MFU {fmt(r.get('mfu_6N'))} (+attn {fmt(r.get('mfu_6N_attn'))})")

    def tok(k):
        return fmt(tr[k].get("tokens_per_s"), ",.0f")

    summary = (f"SDPA packed fp32 max diff {fmt(max(pk['fp32']['packed']))}, bf16 max diff "
               f"{fmt(max(pk['bf16']['packed']))}; {'1.1B' if not args.quick else 'quick'} "
               f"{tr['dtype']} train {tok('no_ckpt')} tok/s, MFU {fmt(tr['no_ckpt'].get('mfu_6N'))} (no ckpt), "
               f"{fmt(tr['ckpt'].get('mfu_6N'))} (ckpt), {fmt(tr['packed_docs_ckpt'].get('mfu_6N'))} (ckpt, packed "
               f"documents); flash-attn: {facts['flash_attn'].split()[0]}")
    print(f"== done in {time.perf_counter() - t_start:.1f} s\n{summary}")
    if args.json:
        args.json.write_text(json.dumps({"facts": facts, "packed": pk, "train": tr, "summary": summary,
                                         "quick": args.quick}, indent=2))


if __name__ == "__main__":
    main()
