"""The ``cptift`` command.

    cptift run configs/demo.yaml                       # the whole pipeline; re-run skips finished steps
    cptift run configs/tiny.yaml cpt.max_steps=5       # dotted key=value overrides (YAML values)
    cptift run configs/tiny.yaml --until cpt           # stop after a step
    torchrun --nproc_per_node 8 --no-python cptift run CONFIG   # every rank runs the same command
    cptift prepare configs/demo.yaml                   # only prepare data and print the data report
    cptift plan configs/demo.yaml --nodes 2 --gpus-per-node 8   # FLOPs, GPU-hours, memory per ZeRO stage,
                                                       # which DeepSpeed config fits; step states; resolved config
    cptift eval configs/demo.yaml --model PATH         # evaluate any HF folder on the run's suites
    cptift report runs/demo                            # re-render report/ from the eval.json files
    cptift export configs/demo.yaml                    # export (after ift and report are done)
    cptift compare runs/a runs/b --names a,b           # each run against its base, with intervals -> runs/compare/
    cptift launch configs/tiny.yaml --executor torchrun --nodes 1 --gpus-per-node 2   # see stages/launch.py

Errors the user can fix (config, data, model path) print one line and exit 2;
anything else prints its traceback, then one ``error:`` line, and exits 1.
A run stopped by SIGTERM or SIGUSR1 saves a checkpoint and exits 75
(``stages/preemption.py``); the same command continues it. A broken ``fail``
gate (``evals.gates``, ``stages/gates.py``) stops the run with exit 3.
In a multi-process job the line names the rank (``error: [rank 1/2] ...``) and
the error is recorded for torchrun's failure summary.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from pathlib import Path

import yaml

from corpora.chat import TemplateError
from corpora.sources import DataError
from stages import distributed, gates, preemption
from stages.config import ConfigError, load_config, to_dict
from stages.modeling import ModelError
from stages.training import TrainingDiverged

USER_ERRORS = (ConfigError, DataError, ModelError, TemplateError, FileNotFoundError, TrainingDiverged)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. cpt.max_steps=10")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cptift", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run every pipeline step, skipping finished ones")
    _config_args(p)
    p.add_argument("--until", metavar="STEP", help="stop after this step (prepare, eval_base, cpt, ...)")
    _config_args(sub.add_parser("prepare", help="prepare data only and print the data report"))
    p = sub.add_parser("plan", help="estimate FLOPs, GPU-hours and memory per GPU; show the steps and config")
    _config_args(p)
    p.add_argument("--nodes", type=int, default=1, help="machines (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per machine (default 1)")
    p.add_argument("--gpu-memory", default="80GB", help="memory of one GPU: 80GB = 80e9 bytes, 80GiB = 80 x 2^30")
    p.add_argument("--mfu", type=float, default=0.40, help="model FLOPs utilisation assumed (default 0.40)")
    p.add_argument("--gpu-tflops", type=float, default=989.0,
                   help="peak dense bf16 TFLOP/s per GPU (default 989, H100 SXM)")
    p = sub.add_parser("eval", help="evaluate a model folder on the run's prepared suites")
    _config_args(p)
    p.add_argument("--model", required=True, help="HF model folder (or builtin: name)")
    p.add_argument("--out", help="write the eval JSON here as well as printing it")
    p = sub.add_parser("report", help="rebuild report/forgetting.{json,md,png} from eval.json files")
    p.add_argument("run_dir")
    _config_args(sub.add_parser("export", help="export the trained model as a servable HF folder"))
    p = sub.add_parser("compare", help="the last checkpoint of several runs, each against its base, with intervals")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--names", help="comma-separated labels, one per run (default: the folders)")
    p.add_argument("--checkpoint", choices=["cpt", "ift"], help="the checkpoint to compare (default: the last)")
    p.add_argument("--out", default="runs/compare", help="folder for compare.md and compare.png (default runs/compare)")
    _launch_args(sub.add_parser("launch", help="run the pipeline on many processes/nodes (torchrun, Slurm, DeepSpeed)"))
    return parser


def _launch_args(p: argparse.ArgumentParser) -> None:
    _config_args(p)
    p.add_argument("--executor", required=True, choices=("torchrun", "slurm", "deepspeed"))
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=1, help="GPUs per node; processes per node without GPUs")
    p.add_argument("--node-rank", type=int, help="run only this node's part of a multi-node job (torchrun, deepspeed)")
    p.add_argument("--master-addr", default="", help="node 0's host[:port] (rendezvous / DeepSpeed master)")
    p.add_argument("--hostfile", default="", help="DeepSpeed hostfile; written for you on one node")
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options may come before, between or after the ``key=value`` overrides."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world = distributed.current()
    # Other ranks log warnings only: N copies of every info line help nobody.
    logging.basicConfig(level=logging.INFO if world.is_writer else logging.WARNING,
                        format=f"%(levelname)s {world.label()}%(name)s: %(message)s")
    for noisy in ("httpx", "DeepSpeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        code = COMMANDS[args.command](args) or 0
        distributed.shutdown()
        return code
    except preemption.Preempted as exc:
        print(f"preempted: {world.label()}{exc}", file=sys.stderr, flush=True)
        return preemption.EXIT_PREEMPTED
    except gates.GateFailed as exc:  # every completed step is kept; exit 3 tells a script "forgot too much"
        return _fail(world, exc, str(exc), gates.EXIT_GATE)
    except USER_ERRORS as exc:
        return _fail(world, exc, str(exc), 2)
    except Exception as exc:  # a bug or an environment failure: keep the trace, end on one line
        if _disk_full(exc):
            return _fail(world, exc, f"no space left on the device writing {_disk_full(exc)}; free space, or point "
                         "run.output_dir / data.cache_dir at a larger disk, and run the same command again: "
                         "completed steps and complete checkpoints are kept", 2)
        traceback.print_exc()
        return _fail(world, exc, f"{type(exc).__name__}: {exc}", 1)


def _disk_full(exc: BaseException) -> str | None:
    """The file being written when the disk (or the file-size limit) ran out, from anywhere in the chain."""
    import errno

    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return str(exc.filename or "a file")
        # Writers in Rust or C++ (safetensors, torch.save) report the OS error in their message only.
        if any(f"os error {n}" in str(exc) for n in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)):
            return f"a file ({exc})"
        exc = exc.__cause__ or exc.__context__
    return None


def _fail(world: distributed.World, exc: BaseException, text: str, code: int) -> int:
    print(f"error: {world.label()}{text}", file=sys.stderr, flush=True)
    if world.is_multi:
        # torchrun names the first failed rank and this message in its summary.
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(exc)
    return code


def cmd_run(args) -> int:
    from stages import pipeline

    cfg = load_config(args.config, args.overrides)
    preemption.install()  # SIGTERM / SIGUSR1: checkpoint, stop, exit 75 (stages/preemption.py)
    steps = pipeline.STEPS
    if args.until:
        if args.until not in steps:
            raise ConfigError(f"--until {args.until}: not a step; steps are {', '.join(steps)}")
        steps = steps[: steps.index(args.until) + 1]
    done = pipeline.run_pipeline(cfg, steps)
    if not distributed.current().is_writer:
        return 0
    out = Path(cfg.run.output_dir)
    skipped = [step for step, info in done.items() if info.get("skipped")]
    if skipped:
        print(f"\n{len(skipped)} of {len(done)} steps were already finished and skipped: {', '.join(skipped)}")
    if "export" not in done:
        print(f"stopped after {steps[-1]} (--until); run without --until to finish: {out}")
        return 0
    print(f"report: {out / 'report' / 'forgetting.md'} (+ .json, .png)\nexported model: {out / 'export'}")
    return 0


def cmd_prepare(args) -> int:
    from corpora import report as data_report
    from stages import pipeline

    cfg = load_config(args.config, args.overrides)
    run = pipeline.open_run(cfg)
    if pipeline.run_step(run, "prepare").get("skipped") and run.world.is_writer:
        print(data_report.read(run.data))  # prepared before: still show what is there
    return 0


def cmd_plan(args) -> int:
    from stages import pipeline, planning

    cfg = load_config(args.config, args.overrides)
    cluster = planning.Cluster(nodes=args.nodes, gpus_per_node=args.gpus_per_node, mfu=args.mfu,
                               gpu_memory_bytes=planning.parse_memory(args.gpu_memory), gpu_tflops=args.gpu_tflops)
    print(planning.render(planning.build_plan(cfg, cluster, planning.model_shape(cfg.model.path))))
    print("\nsteps:")
    for step, state in pipeline.status(cfg):
        print(f"{step:<10} {state}")
    print("\nresolved config:\n" + yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return 0


def cmd_eval(args) -> int:
    from stages import pipeline
    from stages.evaluate import evaluate_checkpoint
    from stages.modeling import check_model_folder, resolve_model

    cfg = load_config(args.config, args.overrides)
    run = pipeline.open_run(cfg)
    pipeline.run_step(run, "prepare")
    model = resolve_model(args.model)
    check_model_folder(model, cfg.model.trust_remote_code)
    result = evaluate_checkpoint(model, run.data, cfg.evals, cfg.model.dtype, cfg.model.attn_implementation,
                                 cfg.model.trust_remote_code)
    if not run.world.is_writer:
        return 0  # every rank evaluated its share; rank 0 holds the gathered result
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


def cmd_report(args) -> int:
    from stages import forgetting

    report, paths = forgetting.report_run(Path(args.run_dir))
    print(forgetting.render_markdown(report))
    print("\n".join(str(p) for p in paths.values()))
    return 0


def cmd_export(args) -> int:
    from stages import pipeline

    cfg = load_config(args.config, args.overrides)
    run = pipeline.open_run(cfg)
    for step in ("ift", "report"):
        if not run.marker(step).exists():
            raise ConfigError(f"export needs the {step} step finished first: run `cptift run {args.config}`")
    pipeline.run_step(run, "export")
    return 0


def cmd_compare(args) -> int:
    from stages.compare import compare_runs

    names = [n.strip() for n in args.names.split(",")] if args.names else None
    text, paths = compare_runs([Path(d) for d in args.run_dirs], names, Path(args.out), args.checkpoint)
    print(text + "\n".join(str(p) for p in paths.values()))
    return 0


def cmd_launch(args) -> int:
    from stages.launch import Request, launch

    cfg = load_config(args.config, args.overrides)  # fail on a bad config here, not on every rank
    req = Request(config=args.config, overrides=args.overrides, executor=args.executor, nodes=args.nodes,
                  gpus_per_node=args.gpus_per_node, node_rank=args.node_rank, master_addr=args.master_addr,
                  hostfile=args.hostfile, dry_run=args.dry_run)
    return launch(req, cfg)


COMMANDS = {"run": cmd_run, "launch": cmd_launch, "prepare": cmd_prepare, "plan": cmd_plan, "eval": cmd_eval,
            "report": cmd_report, "export": cmd_export, "compare": cmd_compare}

if __name__ == "__main__":
    sys.exit(main())
