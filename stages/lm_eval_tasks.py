"""lm-evaluation-harness tasks as members of an evaluation suite: the one place that wraps lm-eval.

    evals:
      general:
        tasks:
          gk: lm_eval:configs/lm_eval/general_knowledge.yaml   # a local YAML task (file or folder)
          arc: lm_eval:arc_easy                                 # a registered task, data in the local cache

    metrics = run_lm_eval_tasks(model, tokenizer, "general", {"gk": "lm_eval:configs/lm_eval/..."},
                                batch_size=8, limit=None)

Needs the optional extra: ``pip install "cptift[lm-eval]"`` (lm-eval 0.4.13 measured).
Each source is run through ``lm_eval.simple_evaluate`` on the in-memory model
(``HFLM(pretrained=model)``), and each of its lm-eval metrics becomes one of
ours, named ``<prefix>/<metric>`` (``gk/acc``, ``gk/acc_norm``; a metric
computed after a filter other than lm-eval's ``none`` is ``<prefix>/<metric>/<filter>``):
``value`` and ``stderr`` are lm-eval's own numbers, ``higher_is_better`` is
lm-eval's, and ``scores`` holds the per-document values from the logged
samples in document order, so the forgetting report's paired bootstrap can
resample them. ``scores`` is kept only when lm-eval aggregates the metric by
a mean and the mean of the scores equals lm-eval's value (a group's value is
checked the same way: its members' documents in order); for other aggregations
(BLEU, perplexity, F1 over the corpus) only ``value`` and ``stderr`` are kept.

Sources: ``lm_eval:<name>`` is a task or group registered in lm-eval;
``lm_eval:<path>`` (a path holds a "/" or ends in .yaml) is a local YAML file
(one task, or a group whose members are found in its folder or among lm-eval's
tasks) or a folder with exactly one top-level task or group. In a single-task
YAML file, relative ``dataset_kwargs.data_files`` of the ``json``/``csv``/
``parquet``/``text``/``arrow`` builders are resolved against the file's folder
(a group's member tasks resolve them as lm-eval does: from the working directory).

Nothing touches the network: HF datasets and hub look-ups are forced offline
while lm-eval runs, so a registered task must already be in the local
datasets cache; otherwise the run stops with a one-line error that names the
task and suggests a local YAML task over local files. ``simple_evaluate``
reseeds random, numpy and torch; their states are restored afterwards.

Ranks: evaluation runs on every rank of a multi-process job, but lm-eval
tasks run on rank 0 only, on its whole (replicated) model, and the metrics are
broadcast to the other ranks, which wait in that broadcast (so
``run.collective_timeout_minutes`` must cover the lm-eval run). A failure on
rank 0 is broadcast too and raised on every rank. With ``evals.parameters:
zero3`` in a multi-process job the parameters are partitioned and no rank
holds the model, so lm-eval tasks are refused with a message saying so.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from pathlib import Path

from corpora.prepare import LM_EVAL_PREFIX
from stages import distributed
from stages.config import ConfigError

INSTALL = 'pip install "cptift[lm-eval]"'
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")  # datasets builders that read local data_files
BOOTSTRAP_ITERS = 1000  # lm-eval's bootstrap for the stderr of non-mean metrics (its default 100k is slow)


class LmEvalError(ConfigError):
    """An lm-eval task that cannot run as configured (a user error: one line, exit 2)."""


def is_lm_eval(source: str) -> bool:
    return source.startswith(LM_EVAL_PREFIX)


def run_lm_eval_tasks(model, tokenizer, suite: str, tasks: dict[str, str], batch_size: int, limit: int | None,
                      world: distributed.World | None = None, partitioned: bool = False) -> list[dict]:
    """Metric dicts of the ``lm_eval:`` sources in ``tasks`` (prefix -> source); the same list on every rank."""
    tasks = {prefix: src for prefix, src in tasks.items() if is_lm_eval(src)}
    world = world or distributed.current()
    if not tasks:
        return []
    if partitioned:
        raise LmEvalError(f"evals.{suite}.tasks {sorted(tasks)}: lm-eval tasks need the whole model on one "
                          f"rank, but evals.parameters=zero3 partitions it over {world.size} processes; use "
                          f"evals.parameters=replicated or drop the lm_eval: tasks")
    outcome: tuple[str, object] = ("ok", None)
    error: Exception | None = None
    if world.is_writer:
        try:
            outcome = ("ok", _run_all(model, tokenizer, suite, tasks, batch_size, limit))
        except Exception as exc:  # every rank must leave the broadcast below, then all raise
            error = exc
            outcome = ("error", str(exc) if isinstance(exc, LmEvalError) else f"{type(exc).__name__}: {exc}")
    status, payload = world.broadcast(outcome)
    if error is not None:
        raise error  # rank 0 keeps the original exception and its traceback
    if status == "error":
        raise LmEvalError(f"lm-eval tasks failed on rank 0: {payload}")
    return payload


def _run_all(model, tokenizer, suite: str, tasks: dict[str, str], batch_size: int, limit: int | None) -> list[dict]:
    lm_eval, HFLM, _ = _import_lm_eval()
    specs = {prefix: _resolve(source) for prefix, source in tasks.items()}
    include = tuple(sorted({str(folder) for _, _, folder, _ in specs.values() if folder}))
    defaults = any(needs_defaults for _, _, _, needs_defaults in specs.values())
    metrics = []
    with _offline(), distributed.rng_preserved():  # simple_evaluate reseeds random, numpy and torch
        manager = _task_manager(include, defaults)
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        for prefix, (spec, name, _, _) in specs.items():
            try:
                results = lm_eval.simple_evaluate(model=lm, tasks=[spec], task_manager=manager, limit=limit,
                                                  log_samples=True, bootstrap_iters=BOOTSTRAP_ITERS)
            except (ConnectionError, FileNotFoundError, KeyError) as exc:  # data or name not found
                if isinstance(exc, KeyError) and "registered" not in str(exc):
                    raise  # a KeyError inside a task (a missing field): not ours to rephrase
                raise LmEvalError(_explain(suite, prefix, tasks[prefix], exc)) from exc
            metrics += to_metrics(suite, prefix, name, results)
    return metrics


@functools.cache
def _task_manager(include: tuple[str, ...], defaults: bool):
    """lm-eval's task index, built once per process: with its registered tasks that takes ~8 s, and
    every suite of every checkpoint (six calls in one ``cptift run``) asks for the same one."""
    _, _, TaskManager = _import_lm_eval()
    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise LmEvalError(f"lm_eval: tasks need lm-evaluation-harness, which is not installed ({exc}); "
                          f"run: {INSTALL}") from exc
    return lm_eval, HFLM, TaskManager


def _explain(suite: str, prefix: str, source: str, exc: Exception) -> str:
    where = f"evals.{suite}.tasks.{prefix} ({source})"
    detail = " ".join(str(exc).split())[:300]
    local = _is_path(source[len(LM_EVAL_PREFIX):])
    if isinstance(exc, ConnectionError) or (isinstance(exc, FileNotFoundError) and not local):
        return (f"{where}: its data is not available offline ({detail}); put the data in the local datasets "
                f"cache, or write a local YAML task over local files (dataset_path: json, see "
                f"configs/lm_eval/general_knowledge.yaml) and name it as lm_eval:<path to the YAML>")
    if isinstance(exc, FileNotFoundError):
        return (f"{where}: a data file is missing ({detail}); check dataset_kwargs.data_files in its YAML "
                f"(relative paths are resolved against the YAML file's folder)")
    if isinstance(exc, KeyError):
        return (f"{where}: not a registered lm-eval task or group ({detail}); check the name with "
                f"`lm-eval ls tasks`, or name a local YAML task as lm_eval:<path>")
    return f"{where}: lm-eval could not load it: {type(exc).__name__}: {detail}"


def _resolve(source: str) -> tuple[str | dict, str, Path | None, bool]:
    """(what lm-eval loads, the task or group name, a folder to index, whether lm-eval's own tasks are needed)."""
    ref = source[len(LM_EVAL_PREFIX):].strip()
    if not ref:
        raise LmEvalError(f"{source!r}: name a task after lm_eval: (lm_eval:arc_easy or lm_eval:<path to YAML>)")
    if not _is_path(ref):
        return ref, ref, None, True  # a registered name
    path = Path(ref).expanduser()
    if path.is_dir():
        path = _top_level_yaml(path)
    if not path.is_file():
        raise LmEvalError(f"{source!r}: no such YAML file or folder")
    from lm_eval.tasks._yaml_loader import load_yaml

    cfg = load_yaml(path, resolve_func=True)
    if isinstance(cfg.get("task"), str) and "group" not in cfg:
        return _with_local_files(cfg, path.parent), cfg["task"], None, False  # includes are merged already
    if cfg.get("group"):
        # By name from the indexed folder (lm-eval 0.4.13 mis-reads a group's YAML path, whose
        # task: is a list); its members come from this folder or from lm-eval's own tasks.
        return cfg["group"], cfg["group"], path.parent, True
    raise LmEvalError(f"{path}: an lm-eval YAML needs 'task: <name>' (one task) or 'group: <name>' with a task list")


def _is_path(ref: str) -> bool:
    """A local task is named by a path with a "/" or a .yaml file name (lm_eval:./tasks, not lm_eval:tasks)."""
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def _top_level_yaml(folder: Path) -> Path:
    """The folder's one task or group YAML that no group in the folder lists as a member."""
    from lm_eval.tasks._yaml_loader import load_yaml

    entries, members = {}, set()
    for path in sorted(folder.rglob("*.yaml")):
        cfg = load_yaml(path, resolve_func=False)
        name = cfg.get("group") if cfg.get("group") else cfg.get("task")
        if isinstance(name, str):
            entries[name] = path
        if cfg.get("group") and isinstance(cfg.get("task"), list):
            members |= {t if isinstance(t, str) else t.get("task") for t in cfg["task"]}
    top = sorted(set(entries) - members)
    if len(top) != 1:
        raise LmEvalError(f"lm_eval:{folder}: the folder holds {len(top)} top-level tasks or groups "
                          f"({', '.join(top) or 'none'}); name one YAML file as lm_eval:<folder>/<file>.yaml")
    return entries[top[0]]


def _with_local_files(cfg: dict, base: Path) -> dict:
    """``cfg`` with relative local ``data_files`` made absolute against the YAML's folder."""
    kwargs = dict(cfg.get("dataset_kwargs") or {})
    if cfg.get("dataset_path") not in LOCAL_BUILDERS or "data_files" not in kwargs:
        return cfg

    def fix(value):
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value if Path(value).is_absolute() or "://" in value else str((base / value).resolve())

    kwargs["data_files"] = fix(kwargs["data_files"])
    return cfg | {"dataset_kwargs": kwargs}


def to_metrics(suite: str, prefix: str, name: str, results: dict) -> list[dict]:
    """Our metric dicts for lm-eval's task or group ``name`` in the ``simple_evaluate`` output."""
    if name not in results["results"]:
        raise LmEvalError(f"lm_eval:{name} ran as {sorted(results['results'])}: it is a tag of several tasks; "
                          f"name a task or a group")
    row = results["results"][name]
    leaves = _leaves(name, results.get("group_subtasks", {}))
    directions = results.get("higher_is_better", {})
    metrics = []
    for key, value in row.items():
        metric, _, filt = key.partition(",")
        if not filt or metric.endswith("_stderr") or not isinstance(value, (int, float)):
            continue  # "alias", "name", "sample_len", stderr entries: not metrics
        out = {"suite": suite, "name": f"{prefix}/{metric}" + ("" if filt == "none" else f"/{filt}"),
               "value": float(value), "higher_is_better": _direction(metric, [name, *leaves], directions),
               "n": _count(leaves, results), "stderr": _number(row.get(f"{metric}_stderr,{filt}"))}
        scores = _scores(metric, filt, leaves, results)
        # Only a mean of per-document scores can be resampled (stages/intervals.py); any other
        # aggregate keeps lm-eval's stderr and gets the normal interval.
        if scores is not None and math.isclose(sum(scores) / len(scores), value, rel_tol=1e-9, abs_tol=1e-12):
            out |= {"n": len(scores), "statistic": "mean", "scores": scores}
        metrics.append(out)
    return metrics


def _leaves(name: str, group_subtasks: dict[str, list[str]]) -> list[str]:
    """The tasks whose documents make up ``name``, in lm-eval's order (``name`` itself for a task)."""
    if name not in group_subtasks:
        return [name]
    return [leaf for sub in group_subtasks[name] for leaf in _leaves(sub, group_subtasks)]


def _scores(metric: str, filt: str, leaves: list[str], results: dict) -> list[float] | None:
    """Per-document values of ``metric`` after filter ``filt``, in document order; None if not a mean of numbers."""
    scores = []
    for task in leaves:
        aggregations = {m.get("metric"): m.get("aggregation", "mean")
                        for m in results.get("configs", {}).get(task, {}).get("metric_list") or []}
        if aggregations.get(metric, "mean") != "mean":
            return None
        rows = sorted((s for s in results.get("samples", {}).get(task, []) if s.get("filter") == filt),
                      key=lambda s: s["doc_id"])
        values = [s.get(metric) for s in rows]
        if not values or not all(isinstance(v, (int, float)) for v in values):
            return None
        scores += [float(v) for v in values]
    return scores or None


def _direction(metric: str, names: list[str], directions: dict) -> bool:
    for name in names:
        if metric in directions.get(name, {}):
            return bool(directions[name][metric])
    from lm_eval.api.registry import is_higher_better

    return bool(is_higher_better(metric))


def _count(leaves: list[str], results: dict) -> int:
    counts = results.get("n-samples", {})
    return sum(int(counts.get(t, {}).get("effective", 0)) for t in leaves)


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@contextlib.contextmanager
def _offline() -> Iterator[None]:
    """HF hub and datasets look-ups fail at once instead of reaching for the network (restored afterwards)."""
    import datasets.config
    import huggingface_hub.constants as hub

    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved_env = {k: os.environ.get(k) for k in names}
    saved = (hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE)
    os.environ.update({k: "1" for k in names})
    hub.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = datasets.config.HF_DATASETS_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE = saved
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
