"""Which steps a changed config invalidates: each step's inputs, hashed into its done-marker.

    inputs = step_inputs(cfg, "ift", upstream={"prepare": "3f..", "cpt": "9a.."})
    inputs_hash(inputs)                    # recorded in steps/ift.json; a re-run compares it
    why_changed(old_marker, inputs)        # ["ift.learning_rate", "cpt (its inputs changed)"]

A step's inputs are the config keys that decide its data and settings
(``DEPENDS``) and the inputs hashes of the checkpoints or results it reads, so
a change travels downstream and no further (every step runs after
``prepare``, which has redone whatever data a changed key touches): change
an IFT setting and IFT, its evaluation, the report and the export rerun,
while preparation, CPT and the two evaluations before it are kept. Keys that only say where or how a step runs (``tracking``, ``run.name``,
``run.output_dir``, timeouts, ``data.engine.workers``...) are in no list, so
changing them invalidates nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

from stages.config import EvalConfig, PipelineConfig, to_dict

# What decides the domain corpus and its splits (the CPT data and the held-out documents).
CORPUS_KEYS = ("model.path", "run.seed", "data.domain", "data.cleaning", "data.max_bad_fraction", "data.engine.tasks")
# What an evaluation reads besides its checkpoint: every evals setting, the held-out splits they draw from.
# Not evals.gates: a rule only judges results, so relaxing one redoes no evaluation (the report reruns).
EVAL_KEYS = ("model.dtype", "model.attn_implementation",
             *(f"evals.{f.name}" for f in dataclasses.fields(EvalConfig) if f.name != "gates"),
             "data.instructions") + CORPUS_KEYS
DEPENDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # step -> (config keys, upstream steps)
    # data.keep_train_text: only the corpus cache's text copy changes, so preparation reruns and nothing after it.
    "prepare": (CORPUS_KEYS + ("data.instructions", "data.replay", "cpt.seq_len", "ift.seq_len",
                               "data.keep_train_text"), ()),
    "eval_base": (EVAL_KEYS, ()),
    "cpt": (CORPUS_KEYS + ("data.replay", "model.dtype", "model.attn_implementation", "cpt"), ()),
    "eval_cpt": (EVAL_KEYS, ("cpt",)),
    "ift": (("model.dtype", "model.attn_implementation", "run.seed", "data.instructions", "ift"), ("cpt",)),
    "eval_ift": (EVAL_KEYS, ("ift",)),
    "report": (("evals.gates",), ("eval_base", "eval_cpt", "eval_ift")),
    "export": (("export",), ("report", "cpt", "ift")),
}


def _lookup(tree: dict, dotted: str):
    for part in dotted.split("."):
        tree = tree[part]
    return tree


def step_inputs(cfg: PipelineConfig, step: str, upstream: dict[str, str | None]) -> dict:
    """The config values and upstream hashes ``step`` depends on (``upstream``: step -> its inputs hash)."""
    keys, ups = DEPENDS[step]
    tree = to_dict(cfg)
    return {"config": {k: _lookup(tree, k) for k in keys}, "upstream": {u: upstream.get(u) for u in ups}}


def _diff(key: str, old, new) -> list[str]:
    """The dotted keys under ``key`` whose values differ (``ift`` -> ``["ift.learning_rate"]``)."""
    if old == new:
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new)) for d in _diff(f"{key}.{k}", old.get(k), new.get(k))]
    return [key]


def inputs_hash(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def why_changed(marker: dict, inputs: dict) -> list[str]:
    """What differs between a finished step's recorded inputs and today's, in words."""
    old = marker.get("inputs")
    if old is None:
        return ["finished before inputs were recorded"]
    reasons = [d for k, v in inputs["config"].items() for d in _diff(k, old["config"].get(k), v)]
    reasons += [f"{u} (its inputs changed)" for u, h in inputs["upstream"].items() if old["upstream"].get(u) != h]
    return reasons
