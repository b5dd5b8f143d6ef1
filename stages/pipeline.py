"""The order of steps, their done-markers, and lineage.

    cptift run configs/demo.yaml              # every step; re-running skips finished ones

    prepare -> eval_base -> cpt -> eval_cpt -> ift -> eval_ift -> report -> export

CPT comes before IFT: instruction tuning last leaves the model answering in
the trained format; CPT after IFT would overwrite it with plain-text habits.

Each finished step writes ``steps/<step>.json`` (when, how long, what it
produced). A re-run skips steps with a marker; an interrupted training step
resumes from its newest checkpoint. ``lineage.json`` records which checkpoint
fed which step.

Every process of a torchrun, DeepSpeed-launcher or srun job runs this driver.
Rank 0 alone prepares data, writes the report, exports, and writes markers,
lineage and W&B runs; training and evaluation run on every rank. The
barriers sit here, around steps, and nowhere in the stages. The run directory
must be on a file system that every node sees.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from corpora.manifest import write_json_atomic
from corpora import report as data_report
from corpora.engine import Executor
from corpora.prepare import PrepareSpec, prepare
from stages import distributed, export, forgetting
from stages.config import ConfigError, PipelineConfig, save_config, to_dict
from stages.cpt import run_cpt
from stages.evaluate import evaluate_checkpoint
from stages.ift import run_ift
from stages.modeling import is_instruction_tuned, load_tokenizer, resolve_model
from stages.tracking import start_run
from stages.training import resolve_deepspeed

log = logging.getLogger(__name__)

STEPS = ("prepare", "eval_base", "cpt", "eval_cpt", "ift", "eval_ift", "report", "export")
# Steps that rank 0 runs alone while the other ranks wait; the rest run on every rank.
WRITER_STEPS = ("prepare", "report", "export")
# Keys that may change between runs in one directory without invalidating finished steps.
VOLATILE_KEYS = ("tracking",)


@dataclass
class Run:
    cfg: PipelineConfig
    dir: Path
    base: str = ""  # resolved base model folder
    world: distributed.World = distributed.World()

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def marker(self, step: str) -> Path:
        return self.dir / "steps" / f"{step}.json"

    def final(self, stage: str) -> str:
        return str(self.base) if stage == "base" else str(self.dir / stage / "final")


def preflight(cfg: PipelineConfig) -> None:
    """Checks that need no model: run before anything slow starts."""
    for stage in ("cpt", "ift"):
        resolve_deepspeed(getattr(cfg, stage).deepspeed)


def check_same_config(run_dir: Path, cfg: PipelineConfig) -> None:
    """Refuse to mix two configs in one run directory: finished steps would lie."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.exists():
        return
    saved, now = yaml.safe_load(saved_path.read_text()), to_dict(cfg)
    changed = [k for k in now if k not in VOLATILE_KEYS and saved.get(k) != now[k]]
    if changed:
        raise ConfigError(
            f"{run_dir} was run with a different config (sections {', '.join(changed)} differ from "
            f"{saved_path}); set run.output_dir to a new directory to run this config"
        )


def spec_from_config(cfg: PipelineConfig) -> PrepareSpec:
    d = cfg.data
    suites = {name: {"perplexity": s.perplexity, "tasks": s.tasks}
              for name, s in (("general", cfg.evals.general), ("domain", cfg.evals.domain))}
    return PrepareSpec(
        domain_sources=d.domain.sources, instruction_sources=d.instructions.sources,
        cpt_seq_len=cfg.cpt.seq_len, ift_seq_len=cfg.ift.seq_len, seed=cfg.run.seed,
        text_field=d.domain.text_field, min_chars=d.domain.min_chars, max_documents=d.domain.max_documents,
        val_fraction=d.domain.val_fraction, test_fraction=d.domain.test_fraction,
        instruction_test_fraction=d.instructions.test_fraction, max_records=d.instructions.max_records,
        replay_sources=d.replay.sources, replay_ratio=d.replay.ratio, eval_suites=suites,
        cleaning=to_dict(d.cleaning), max_bad_fraction=d.max_bad_fraction, ift_micro_batch=cfg.ift.micro_batch_size,
        cache_dir=d.cache_dir, executor=Executor(kind=str(d.engine.executor), workers=d.engine.workers,
                                                 slurm=to_dict(d.engine.slurm)),
    )


# ---------------------------------------------------------------- steps


def step_prepare(run: Run) -> dict:
    manifest = prepare(spec_from_config(run.cfg), load_tokenizer(run.base), run.data)
    print(data_report.read(run.data))
    return {"fingerprint": manifest["fingerprint"], "reused": manifest.get("reused", False),
            "report": str(run.data / "report.md")}


def make_eval_step(stage: str) -> Callable[[Run], dict]:
    def step(run: Run) -> dict | None:
        result = evaluate_checkpoint(run.final(stage), run.data, run.cfg.evals, run.cfg.model.dtype,
                                     run.cfg.model.attn_implementation)
        if not run.world.is_writer:
            return None  # every rank holds the gathered result; rank 0 records it
        result = {"checkpoint": stage} | result
        (run.dir / stage).mkdir(parents=True, exist_ok=True)
        write_json_atomic(run.dir / stage / "eval.json", result)
        with start_run(run.cfg, job_type="eval") as tracker:
            tracker.log({f"eval/{m['suite']}/{m['name']}": m["value"] for m in result["metrics"]}
                        | {"eval/checkpoint_index": STEPS.index(f"eval_{stage}")})
        for m in result["metrics"]:
            print(f"  {stage:>4} {m['suite']:>7} {m['name']:<24} {m['value']:.4f}")
        return {"eval": str(run.dir / stage / "eval.json")}
    return step


def make_train_step(stage: str, source: str, train: Callable) -> Callable[[Run], dict]:
    def step(run: Run) -> dict | None:
        with start_run(run.cfg, job_type=stage) as tracker:
            metrics = train(run.cfg, run.final(source), run.data, run.dir / stage, tracker)
        if not run.world.is_writer:
            return None
        write_json_atomic(run.dir / stage / "train_metrics.json", metrics)
        return {"from": source, "final": run.final(stage), "resumed_from": metrics.get("resumed_from")}
    return step


def step_report(run: Run) -> dict:
    report, paths = forgetting.report_run(run.dir)
    with start_run(run.cfg, job_type="report") as tracker:
        columns = ["suite", "metric", *report["checkpoints"], *[f"delta_{c}" for c in report["checkpoints"][1:]]]
        rows = [[m["suite"], m["name"], *m["values"].values(), *m["delta"].values()] for m in report["metrics"]]
        tracker.log_table("forgetting", columns, rows)
    print(forgetting.render_markdown(report))
    return {k: str(v) for k, v in paths.items()}


def step_export(run: Run) -> dict:
    src = run.final(run.cfg.export.from_stage)
    report = json.loads((run.dir / "report" / "forgetting.json").read_text())
    with start_run(run.cfg, job_type="export"):
        out = export.export_model(src, run.dir / "export", report, run.cfg)
    return out


STEP_FUNCS: dict[str, Callable[[Run], dict]] = {
    "prepare": step_prepare,
    "eval_base": make_eval_step("base"),
    "cpt": make_train_step("cpt", "base", run_cpt),
    "eval_cpt": make_eval_step("cpt"),
    "ift": make_train_step("ift", "cpt", run_ift),
    "eval_ift": make_eval_step("ift"),
    "report": step_report,
    "export": step_export,
}


# ---------------------------------------------------------------- driver


def open_run(cfg: PipelineConfig) -> Run:
    world = distributed.init(cfg.run.collective_timeout_minutes)
    preflight(cfg)
    run = Run(cfg=cfg, dir=Path(cfg.run.output_dir), world=world)
    check_same_config(run.dir, cfg)
    world.barrier()  # every rank has compared against the old config before rank 0 replaces it
    if world.is_writer:
        (run.dir / "steps").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.dir / "config.yaml")
    run.base = _resolve_base(cfg.model.path, world)
    return run


def _resolve_base(path: str, world: distributed.World) -> str:
    """Built-in models are materialised by one process per node (caches may be node-local)."""
    if world.local_rank == 0:
        resolve_model(path)
    world.barrier()
    return resolve_model(path)  # the folder exists now: a path check


def run_pipeline(cfg: PipelineConfig, steps: tuple[str, ...] = STEPS) -> dict[str, dict]:
    run = open_run(cfg)
    if run.world.is_writer and is_instruction_tuned(load_tokenizer(run.base), cfg.model.path):
        log.warning("%s is already instruction-tuned: CPT will erode its chat behaviour and IFT must "
                    "restore it; watch the general suite's */stopped metrics in the report", cfg.model.path)
    done = {}
    for step in steps:
        done[step] = run_step(run, step)
    if run.world.is_writer:
        _write_lineage(run)
    return done


def run_step(run: Run, step: str) -> dict:
    """Run one step on the ranks it needs, or skip it when rank 0 sees its marker."""
    world, marker = run.world, run.marker(step)
    info = world.broadcast(json.loads(marker.read_text()) if world.is_writer and marker.exists() else None)
    if info is not None:
        _say(world, f"[skip] {step}: finished {info['finished_at']} in {info['seconds']:.1f} s "
                    f"(delete {marker} to redo)")
        return info | {"skipped": True}
    _say(world, f"[step] {step} ...")
    start = time.time()
    outputs = STEP_FUNCS[step](run) if world.is_writer or step not in WRITER_STEPS else None
    world.barrier()  # no rank starts the next step before this one is complete everywhere
    info = {"step": step, "seconds": round(time.time() - start, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "outputs": outputs,
            "processes": world.size}
    if world.is_writer:
        write_json_atomic(marker, info)
    _say(world, f"[done] {step} in {info['seconds']:.1f} s")
    return info


def _say(world: distributed.World, text: str) -> None:
    if world.is_writer:
        print(text, flush=True)


def _write_lineage(run: Run) -> None:
    lineage = {"base": {"model": run.cfg.model.path, "resolved": run.base}}
    for stage, source in (("cpt", "base"), ("ift", "cpt")):
        if run.marker(stage).exists():
            lineage[stage] = {"from": source, "checkpoint": f"{stage}/final"}
    if run.marker("prepare").exists():
        lineage["data"] = json.loads(run.marker("prepare").read_text())["outputs"]
    if run.marker("export").exists():
        lineage["export"] = {"from": run.cfg.export.from_stage, "path": "export"}
    write_json_atomic(run.dir / "lineage.json", lineage)


def status(cfg: PipelineConfig) -> list[tuple[str, str]]:
    """(step, state) pairs for ``cptift plan``."""
    run = Run(cfg=cfg, dir=Path(cfg.run.output_dir))
    return [(s, "done" if run.marker(s).exists() else "pending") for s in STEPS]

