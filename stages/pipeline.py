"""The order of steps, their done-markers, and lineage.

    cptift run configs/demo.yaml              # every step; re-running skips finished ones

    prepare -> eval_base -> cpt -> eval_cpt -> ift -> eval_ift -> report -> export

CPT comes before IFT: instruction tuning last leaves the model answering in
the trained format; CPT after IFT would overwrite it with plain-text habits.

Each finished step writes ``steps/<step>.json`` (when, how long, what it
produced, and a hash of its inputs: ``stages.invalidation``). A re-run skips
steps whose marker records today's inputs and redoes those whose config
keys or upstream results changed; an interrupted training step resumes from
its newest complete checkpoint of the same inputs. ``lineage.json`` records
which checkpoint fed which step. Rank 0 holds ``run.lock`` for the run.

Every process of a torchrun, DeepSpeed-launcher or srun job runs this driver.
Rank 0 alone prepares data, writes the report, exports, and writes markers,
lineage and W&B runs; training and evaluation run on every rank. The
barriers sit here, around steps, and nowhere in the stages. The run directory
must be on a file system that every node sees.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from corpora import report as data_report
from corpora.engine import Executor
from corpora.manifest import write_json_atomic
from corpora.prepare import PrepareSpec, prepare
from stages import distributed, export, forgetting, gates, invalidation, preemption
from stages.config import ConfigError, PipelineConfig, save_config, to_dict
from stages.cpt import run_cpt
from stages.evaluate import evaluate_checkpoint
from stages.ift import run_ift
from stages.modeling import check_model_folder, is_instruction_tuned, load_tokenizer, resolve_model
from stages.runlock import RunLock
from stages.tracking import start_run
from stages.training import resolve_deepspeed

log = logging.getLogger(__name__)

STEPS = ("prepare", "eval_base", "cpt", "eval_cpt", "ift", "eval_ift", "report", "export")
# Steps that rank 0 runs alone while the other ranks wait; the rest run on every rank.
WRITER_STEPS = ("prepare", "report", "export")


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
        cleaning=to_dict(d.cleaning), tasks=d.engine.tasks, max_bad_fraction=d.max_bad_fraction,
        keep_train_text=d.keep_train_text,
        ift_micro_batch=cfg.ift.micro_batch_size,
        cache_dir=d.cache_dir, executor=Executor(kind=str(d.engine.executor), workers=d.engine.workers,
                                                 slurm=to_dict(d.engine.slurm)),
    )


# ---------------------------------------------------------------- steps


def step_prepare(run: Run) -> dict:
    manifest = prepare(spec_from_config(run.cfg), load_tokenizer(run.base, run.cfg.model.trust_remote_code), run.data)
    print(data_report.read(run.data))
    return {"fingerprint": manifest["fingerprint"], "reused": manifest.get("reused", False),
            "report": str(run.data / "report.md")}


def make_eval_step(stage: str) -> Callable[[Run], dict]:
    def step(run: Run) -> dict | None:
        result = evaluate_checkpoint(run.final(stage), run.data, run.cfg.evals, run.cfg.model.dtype,
                                     run.cfg.model.attn_implementation, run.cfg.model.trust_remote_code)
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
    with start_run(run.cfg, job_type="export"):
        return export.export_model(src, run.dir / "export", run.dir / "report", run.cfg)


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
    if world.is_writer:
        _check_writable(run.dir)
        RunLock(run.dir).acquire()  # before anything is read or written: a second live run is refused
        (run.dir / "steps").mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.dir / "config.yaml")
    run.base = _resolve_base(cfg.model.path, world)
    check_model_folder(run.base, cfg.model.trust_remote_code)
    return run


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"run.output_dir: cannot write to {folder} ({exc.strerror or exc}); "
                          "choose a directory you can write") from None


def _resolve_base(path: str, world: distributed.World) -> str:
    """Built-in models are materialised by one process per node (caches may be node-local)."""
    if world.local_rank == 0:
        resolve_model(path)
    world.barrier()
    return resolve_model(path)  # the folder exists now: a path check


def run_pipeline(cfg: PipelineConfig, steps: tuple[str, ...] = STEPS) -> dict[str, dict]:
    run = open_run(cfg)
    if run.world.is_writer and is_instruction_tuned(load_tokenizer(run.base, cfg.model.trust_remote_code),
                                                    cfg.model.path):
        log.warning("%s is already instruction-tuned: CPT will erode its chat behaviour and IFT must "
                    "restore it; watch the general suite's */stopped metrics in the report", cfg.model.path)
    done = {}
    for step in steps:
        done[step] = run_step(run, step)
        if step in ("eval_cpt", "eval_ift"):
            check_gates(run, step.removeprefix("eval_"))
    if run.world.is_writer:
        _write_lineage(run)
    return done


def run_step(run: Run, step: str) -> dict:
    """Run one step on the ranks it needs, or skip it when rank 0 sees its marker with today's inputs."""
    world, marker = run.world, run.marker(step)
    preemption.check_between_steps(step)
    decision = world.broadcast(_decide(run, step) if world.is_writer else None)
    if decision["skip"]:
        info = decision["marker"]
        _say(world, f"[skip] {step}: finished {info['finished_at']} in {info['seconds']:.1f} s "
                    f"(delete {marker} to redo)")
        return info | {"skipped": True}
    if decision["why"]:
        _say(world, f"[redo] {step}: changed since it finished: {', '.join(decision['why'])}")
    if world.is_writer and step in ("cpt", "ift"):
        _checkpoints_for(run.dir / step / "checkpoints", decision["hash"])
    world.barrier()
    _say(world, f"[step] {step} ...")
    start = time.time()
    outputs = STEP_FUNCS[step](run) if world.is_writer or step not in WRITER_STEPS else None
    world.barrier()  # no rank starts the next step before this one is complete everywhere
    info = {"step": step, "seconds": round(time.time() - start, 1),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "outputs": outputs,
            "processes": world.size, "inputs": decision["inputs"], "inputs_hash": decision["hash"]}
    if world.is_writer:
        write_json_atomic(marker, info)
    _say(world, f"[done] {step} in {info['seconds']:.1f} s")
    return info


def check_gates(run: Run, stage: str) -> None:
    """The rules of ``evals.gates`` for ``stage``, checked against base; a broken ``fail`` rule stops every rank.

    Checked on every run, also when the evaluation was skipped, so a relaxed rule lets the next run go on.
    """
    if not any(g.after == stage for g in run.cfg.evals.gates):
        if run.world.is_writer:
            (run.dir / stage / "gates.json").unlink(missing_ok=True)  # results of rules since removed
        return
    message = None
    if run.world.is_writer:
        report = forgetting.build_report(forgetting.load_evals(run.dir, ["base", stage]))
        results = gates.check(report, run.cfg.evals.gates, stage)
        write_json_atomic(run.dir / stage / "gates.json", results)
        for r in results:
            (log.warning if not r["passed"] else log.info)("gate %s: %s: %s", "passed" if r["passed"] else
                                                           "BROKEN", r["rule"], r["detail"])
        message = gates.failure(results)
    message = run.world.broadcast(message)
    if message:
        raise gates.GateFailed(message)


def _checkpoints_for(folder: Path, digest: str) -> None:
    """Keep the checkpoints only if they were written with today's inputs, so resume never mixes settings.

    The old ``final/`` and marker stay until the new run replaces them.
    """
    tag = folder / "inputs_hash"
    if folder.exists() and (not tag.exists() or tag.read_text() != digest):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tag.write_text(digest)


def _decide(run: Run, step: str) -> dict:
    """Rank 0's view: today's inputs of ``step``, and whether its marker records the same."""
    markers = _markers(run)
    upstream = {s: m.get("inputs_hash") if m else None for s, m in markers.items()}
    inputs = invalidation.step_inputs(run.cfg, step, upstream)
    digest = invalidation.inputs_hash(inputs)
    marker = markers[step]
    same = marker is not None and marker.get("inputs_hash") == digest
    why = invalidation.why_changed(marker, inputs) if marker and not same else []
    return {"skip": same, "marker": marker, "inputs": inputs, "hash": digest, "why": why}


def _markers(run: Run) -> dict[str, dict | None]:
    """Every step's done-marker (None where the step has not finished)."""
    return {s: json.loads(run.marker(s).read_text()) if run.marker(s).exists() else None for s in STEPS}


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
    """(step, state) pairs for ``cptift plan``: done, pending, or what made a finished step stale.

    A step downstream of one that will rerun is stale too: its upstream hash
    will change when the rerun records new inputs.
    """
    run = Run(cfg=cfg, dir=Path(cfg.run.output_dir))
    rerun, states = set(), []
    for step in STEPS:
        d = _decide(run, step)
        ups = [u for u in invalidation.DEPENDS[step][1] if u in rerun]
        if d["skip"] and not ups:
            states.append((step, "done"))
            continue
        rerun.add(step)
        why = d["why"] + [f"{u} reruns" for u in ups if f"{u} (its inputs changed)" not in d["why"]]
        states.append((step, f"rerun: {', '.join(why)}" if d["marker"] else "pending"))
    return states
