"""The ``cptift`` command.

    cptift run configs/demo.yaml                       # the whole pipeline; re-run skips finished steps
    cptift run configs/tiny.yaml cpt.max_steps=5       # dotted key=value overrides (YAML values)
    cptift prepare configs/demo.yaml                   # only prepare data and print the data report
    cptift plan configs/demo.yaml                      # the steps, their state, and the resolved config
    cptift eval configs/demo.yaml --model PATH         # evaluate any HF folder on the run's suites
    cptift report runs/demo                            # re-render report/ from the eval.json files
    cptift export configs/demo.yaml                    # export (after ift and report are done)
    cptift compare runs/a runs/b                       # side-by-side final metrics of several runs

Errors the user can fix (config, data, model path) print one line and exit 2;
anything else prints its traceback, then one ``error:`` line, and exits 1.
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
from stages.config import ConfigError, load_config, to_dict
from stages.modeling import ModelError

USER_ERRORS = (ConfigError, DataError, ModelError, TemplateError, FileNotFoundError)


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="pipeline YAML, e.g. configs/demo.yaml")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. cpt.max_steps=10")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cptift", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _config_args(sub.add_parser("run", help="run every pipeline step, skipping finished ones"))
    _config_args(sub.add_parser("prepare", help="prepare data only and print the data report"))
    _config_args(sub.add_parser("plan", help="show the steps, their state and the resolved config"))
    p = sub.add_parser("eval", help="evaluate a model folder on the run's prepared suites")
    _config_args(p)
    p.add_argument("--model", required=True, help="HF model folder (or builtin: name)")
    p.add_argument("--out", help="write the eval JSON here as well as printing it")
    p = sub.add_parser("report", help="rebuild report/forgetting.{json,md,png} from eval.json files")
    p.add_argument("run_dir")
    _config_args(sub.add_parser("export", help="export the trained model as a servable HF folder"))
    p = sub.add_parser("compare", help="compare the forgetting reports of several runs")
    p.add_argument("run_dirs", nargs="+")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "DeepSpeed", "torch.distributed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return COMMANDS[args.command](args) or 0
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a bug or an environment failure: keep the trace, end on one line
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


def cmd_run(args) -> int:
    from stages import pipeline

    cfg = load_config(args.config, args.overrides)
    done = pipeline.run_pipeline(cfg)
    out = Path(cfg.run.output_dir)
    skipped = [step for step, info in done.items() if info.get("skipped")]
    if skipped:
        print(f"\n{len(skipped)} of {len(done)} steps were already finished and skipped: {', '.join(skipped)}")
    print(f"report: {out / 'report' / 'forgetting.md'} (+ .json, .png)\nexported model: {out / 'export'}")
    return 0


def cmd_prepare(args) -> int:
    from stages import pipeline

    cfg = load_config(args.config, args.overrides)
    pipeline.run_step(pipeline.open_run(cfg), "prepare")
    return 0


def cmd_plan(args) -> int:
    from stages import pipeline

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    for step, state in pipeline.status(cfg):
        print(f"{step:<10} {state}")
    return 0


def cmd_eval(args) -> int:
    from stages import pipeline
    from stages.evaluate import evaluate_checkpoint
    from stages.modeling import resolve_model

    cfg = load_config(args.config, args.overrides)
    run = pipeline.open_run(cfg)
    pipeline.run_step(run, "prepare")
    result = evaluate_checkpoint(resolve_model(args.model), run.data, cfg.evals, cfg.model.dtype)
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
    reports = {}
    for d in args.run_dirs:
        path = Path(d) / "report" / "forgetting.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: finish `cptift run` for {d} first")
        reports[d] = json.loads(path.read_text())
    names = list(reports)
    print("| suite | metric | " + " | ".join(f"{n} (last, Δ)" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    keys = dict.fromkeys((m["suite"], m["name"]) for r in reports.values() for m in r["metrics"])
    for suite, name in keys:
        cells = [_last_cell(reports[n], suite, name) for n in names]
        print(f"| {suite} | {name} | " + " | ".join(cells) + " |")
    return 0


def _last_cell(report: dict, suite: str, name: str) -> str:
    last = report["checkpoints"][-1]
    for m in report["metrics"]:
        if (m["suite"], m["name"]) == (suite, name) and m["values"].get(last) is not None:
            return f"{m['values'][last]:.4g} ({m['delta'][last]:+.3g})"
    return "-"


COMMANDS = {"run": cmd_run, "prepare": cmd_prepare, "plan": cmd_plan, "eval": cmd_eval,
            "report": cmd_report, "export": cmd_export, "compare": cmd_compare}

if __name__ == "__main__":
    sys.exit(main())
