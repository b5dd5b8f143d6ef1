"""The data report: what preparation read, dropped, replaced and wrote, as ``report.{json,md}``.

    cptift prepare configs/demo.yaml      # prints the Markdown and writes data/report.{json,md}

Every number comes from the counters the pipeline steps kept (datatrove's
``stats.json``, our problem logs) or from the files written, never from an
estimate, so the report can be checked against the shards.
"""

from __future__ import annotations

import json
from pathlib import Path

from corpora.manifest import write_json_atomic

MAX_LISTED_PROBLEMS = 50  # in the Markdown; the JSON lists all


def corpus_section(info: dict, seq_len: int) -> dict:
    """One corpus (domain or replay): per source, per filter, duplicates, PII, problems, splits, blocks."""
    c = info["counts"]
    sources = {s: {"documents": c.get(f"documents:{s}", 0), "characters": c.get(f"chars:{s}", 0),
                   "tokens_kept": c.get(f"tokens:{s}", 0)} for s in info["sources"]}
    dropped = {k.removeprefix("dropped_"): v for k, v in sorted(c.items())
               if k.startswith("dropped_") and not k.startswith("dropped_minhash")}
    train = info["splits"]["train"]["tokens"]
    return {
        "sources": sources,
        "documents_read": c.get("documents", 0),
        "dropped_by_filter": dropped,
        "exact_duplicates": info["exact_duplicates"], "near_duplicates": info["near_duplicates"],
        "pii_replaced": {k.removeprefix("replaced_"): v for k, v in sorted(c.items()) if k.startswith("replaced_")},
        "bad_inputs": info["problems"],
        "splits": info["splits"],
        "blocks": {"seq_len": seq_len, "train_blocks": train // seq_len, "tail_tokens": train % seq_len,
                   "efficiency": (train - train % seq_len) / train if train else 0.0},
    }


def build(manifest: dict) -> dict:
    seq_len = manifest["cpt"]["seq_len"]
    report = {"domain": corpus_section(manifest["domain"], seq_len)}
    if "replay" in manifest:
        report["replay"] = corpus_section(manifest["replay"], seq_len)
        report["replay"]["ratio"] = manifest["cpt"]["replay_ratio"]
    report["ift"] = manifest["ift"]
    report["eval"] = manifest["eval"]
    return report


def render_markdown(report: dict) -> str:
    lines = ["# Data report", ""]
    for name in ("domain", "replay"):
        if name in report:
            lines += _corpus_markdown(name, report[name])
    ift = report["ift"]
    eff = ift["packing_efficiency"]
    lines += ["## IFT", "",
              f"{ift['examples']} examples kept, {ift['dropped_too_long']} dropped as longer than ift.seq_len; "
              f"packed into {ift['packed_blocks']} blocks of {ift['seq_len']} tokens: "
              f"{100 * eff['packed']:.1f}% real tokens packed, {100 * eff['padded']:.1f}% padded per batch.", "",
              "## Evaluation sets", "", *[f"- {k}: {v}" for k, v in report["eval"].items()], ""]
    return "\n".join(lines)


def _corpus_markdown(name: str, r: dict) -> list[str]:
    lines = [f"## {name.capitalize()} corpus", "", "| source | documents | characters | tokens kept |",
             "|---|---:|---:|---:|"]
    lines += [f"| {s} | {v['documents']:,} | {v['characters']:,} | {v['tokens_kept']:,} |"
              for s, v in r["sources"].items()]
    dropped = ", ".join(f"{k} {v}" for k, v in r["dropped_by_filter"].items()) or "none"
    pii = ", ".join(f"{k} {v}" for k, v in r["pii_replaced"].items()) or "none"
    splits = ", ".join(f"{s} {v['documents']:,} documents / {v['tokens']:,} tokens" for s, v in r["splits"].items())
    b = r["blocks"]
    lines += ["", f"- read: {r['documents_read']:,} documents", f"- dropped by filter: {dropped}",
              f"- duplicates removed: {r['exact_duplicates']} exact, {r['near_duplicates']} near (MinHash)",
              f"- PII replaced: {pii}", f"- splits: {splits}",
              f"- blocks: {b['train_blocks']:,} x {b['seq_len']} tokens; {b['tail_tokens']} tail tokens not trained "
              f"({100 * b['efficiency']:.2f}% of training tokens in blocks)"]
    if "ratio" in r:
        lines.append(f"- replay ratio: {r['ratio']} of CPT tokens")
    lines += ["", f"### Bad inputs ({len(r['bad_inputs'])}, skipped)", ""]
    lines += [f"- `{p['file']}`{':' + str(p['line']) if p['line'] else ''}: {p['reason']}: {p['detail']}"
              for p in r["bad_inputs"][:MAX_LISTED_PROBLEMS]] or ["none"]
    if len(r["bad_inputs"]) > MAX_LISTED_PROBLEMS:
        lines.append(f"- ... {len(r['bad_inputs']) - MAX_LISTED_PROBLEMS} more in report.json")
    return lines + [""]


def write(manifest: dict, out: Path) -> dict:
    report = build(manifest)
    write_json_atomic(out / "report.json", report)
    (out / "report.md").write_text(render_markdown(report))
    return report


def read(data_dir: Path) -> str:
    """The Markdown report of a prepared folder, for ``cptift prepare`` and the pipeline log."""
    return render_markdown(json.loads((data_dir / "report.json").read_text()))
