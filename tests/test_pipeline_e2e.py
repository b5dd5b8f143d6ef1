"""End to end: `cptift run configs/tiny.yaml` produces every artifact of the contract.

Runs the real CLI in a subprocess (real DeepSpeed engine, real Trainer, real
W&B in offline mode, the tiny model), once per test session, then checks the
run directory. A second invocation must skip every step.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
STEPS = ["prepare", "eval_base", "cpt", "eval_cpt", "ift", "eval_ift", "report", "export"]
pytestmark = pytest.mark.slow
# Credentials a cluster job typically has in its environment: none may be written into the run directory.
SECRETS = {"WANDB_API_KEY": "cptift0canary0wandb0" + "7" * 20, "HF_TOKEN": "hf_cptiftCanaryToken0123456789abcdef",
           "HUGGING_FACE_HUB_TOKEN": "hf_cptiftCanaryHubToken0123456789ab", "AWS_SECRET_ACCESS_KEY": "cptiftCanaryAws/K7"}


def cptift(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    # WANDB_MODE=offline with a key set: W&B writes its offline run (config, metadata, debug logs) here.
    env = os.environ | SECRETS | {"WANDB_MODE": "offline", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "stages.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, isolated_cache):
    out = tmp_path_factory.mktemp("e2e") / "run"
    proc = cptift("run", "configs/tiny.yaml", f"run.output_dir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return out, proc


def test_every_step_writes_its_marker_and_outputs(tiny_run):
    out, proc = tiny_run
    for step in STEPS:
        marker = json.loads((out / "steps" / f"{step}.json").read_text())
        assert marker["step"] == step and marker["seconds"] >= 0
    for path in ["config.yaml", "lineage.json", "base/eval.json", "cpt/eval.json", "ift/eval.json",
                 "cpt/final/model.safetensors", "ift/final/model.safetensors", "data/manifest.json",
                 "report/forgetting.json", "report/forgetting.md", "report/forgetting.png"]:
        assert (out / path).is_file(), path
    assert list((out / "cpt" / "checkpoints").glob("checkpoint-*")), "CPT wrote no checkpoint"
    assert not (out / "cpt" / "final" / "training_args.bin").exists()  # no pickles in model folders
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["cpt"]["from"] == "base" and lineage["ift"]["from"] == "cpt"
    assert f"report: {out / 'report' / 'forgetting.md'}" in proc.stdout


def test_forgetting_report_holds_every_metric_with_deltas(tiny_run):
    out, _ = tiny_run
    report = json.loads((out / "report" / "forgetting.json").read_text())
    assert report["checkpoints"] == ["base", "cpt", "ift"]
    evals = {c: json.loads((out / c / "eval.json").read_text()) for c in report["checkpoints"]}
    by_key = {(m["suite"], m["name"]): m for m in report["metrics"]}
    for ckpt, result in evals.items():
        for m in result["metrics"]:
            row = by_key[(m["suite"], m["name"])]
            assert row["values"][ckpt] == pytest.approx(m["value"])
            if ckpt != "base":
                assert row["delta"][ckpt] == pytest.approx(m["value"] - row["values"]["base"], abs=1e-5)
    names = {suite: {n for s, n in by_key if s == suite} for suite in ("general", "domain")}
    for suite, metrics in names.items():
        assert "perplexity" in metrics
        assert any(n.endswith("/accuracy") for n in metrics), suite
    md = (out / "report" / "forgetting.md").read_text()
    for suite, name in by_key:
        assert name in md
    assert (out / "report" / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cpt_lowers_domain_loss_on_tiny_model(tiny_run):
    """A random model trained on the domain must fit held-out domain text better."""
    out, _ = tiny_run
    report = json.loads((out / "report" / "forgetting.json").read_text())
    ppl = next(m for m in report["metrics"] if m["suite"] == "domain" and m["name"] == "perplexity")
    assert ppl["values"]["cpt"] < ppl["values"]["base"]
    assert all(math.isfinite(v) for v in ppl["values"].values())


def test_training_changed_every_parameter(tiny_run):
    out, _ = tiny_run
    lineage = json.loads((out / "lineage.json").read_text())
    base = load_file(Path(lineage["base"]["resolved"]) / "model.safetensors")
    cpt = load_file(out / "cpt" / "final" / "model.safetensors")
    ift = load_file(out / "ift" / "final" / "model.safetensors")
    # A tied lm_head may be saved by one writer and not another; every base tensor must be there.
    assert set(base) <= set(cpt) and set(cpt) == set(ift)
    for name in base:
        assert not base[name].float().equal(cpt[name].float()), f"CPT did not change {name}"
        assert not cpt[name].float().equal(ift[name].float()), f"IFT did not change {name}"


def test_export_loads_with_plain_from_pretrained_in_fresh_process(tiny_run):
    out, _ = tiny_run
    export = out / "export"
    for name in ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "README.md"]:
        assert (export / name).is_file(), name
    code = (
        "import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "p = sys.argv[1]; tok = AutoTokenizer.from_pretrained(p); m = AutoModelForCausalLM.from_pretrained(p)\n"
        "ids = tok.apply_chat_template([{'role': 'user', 'content': 'Hi'}], add_generation_prompt=True,"
        " return_tensors='pt', return_dict=True)\n"
        "out = m.generate(**ids, max_new_tokens=5, do_sample=False)\n"
        "assert out.shape[1] > ids['input_ids'].shape[1]\n"
        "print('chat_template' if tok.chat_template else 'none', m.generation_config.eos_token_id == tok.eos_token_id)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(export)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ["chat_template", "True"]
    assert "| metric |" in (export / "README.md").read_text()  # model card carries the eval table


def test_wandb_offline_run_per_step(tiny_run):
    out, _ = tiny_run
    runs = sorted((out / "wandb" / "wandb").glob("offline-run-*"))
    # eval x3, cpt, ift, report, export
    assert len(runs) == 7, runs
    assert all(list(r.glob("*.wandb")) for r in runs)


def _wandb_items(run_dir: Path, key: str) -> list[float]:
    """The values logged under ``key`` in one offline run's ``.wandb`` file.

    The file is W&B's log of protobuf records, and wandb 0.31 ships no Python reader for it: the
    history items are found by their framing (HistoryItem: field 2 the key, field 16 its JSON value).
    """
    data = next(run_dir.glob("*.wandb")).read_bytes()
    name = key.encode()
    pattern = re.escape(bytes([0x12, len(name)]) + name + b"\x82\x01") + rb"(.)"
    return [float(data[m.end(): m.end() + m.group(1)[0]]) for m in re.finditer(pattern, data, re.DOTALL)]


def test_held_out_losses_reach_wandb_and_the_report_as_curves(tiny_run):
    out, _ = tiny_run
    report = json.loads((out / "report" / "forgetting.json").read_text())
    assert (out / "report" / "training_curves.png").stat().st_size > 10_000
    assert "## Held-out loss during training" in (out / "report" / "forgetting.md").read_text()
    for stage in ("cpt", "ift"):
        points = json.loads((out / stage / "val_losses.json").read_text())["points"]
        assert report["training_curves"][stage]["points"] == points and [p["step"] for p in points][0] == 0
        for name in ("domain", "general"):
            logged = {v for r in (out / "wandb" / "wandb").glob("offline-run-*")
                      for v in _wandb_items(r, f"{stage}/val/{name}_loss")}
            assert {p[f"{name}_loss"] for p in points} <= logged, (stage, name)


def test_no_credential_from_the_environment_reaches_any_file_of_the_run(tiny_run):
    """Config, logs, reports, checkpoints (training_args included), data and the W&B offline runs."""
    out, proc = tiny_run
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts and p.suffix == ".wandb" for p in files), "W&B offline runs must be scanned too"
    assert {"config.yaml", "report.json", "report.md"} <= {p.name for p in files}
    leaks = [(p, name) for p in files for name, secret in SECRETS.items() if secret.encode() in p.read_bytes()]
    assert not leaks, leaks
    assert not [name for name, secret in SECRETS.items() if secret in proc.stdout + proc.stderr]


def test_second_run_skips_every_step(tiny_run):
    out, _ = tiny_run
    before = {s: (out / "steps" / f"{s}.json").read_text() for s in STEPS}
    proc = cptift("run", "configs/tiny.yaml", f"run.output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("[skip]") == len(STEPS)
    assert f"{len(STEPS)} of {len(STEPS)} steps were already finished" in proc.stdout
    assert before == {s: (out / "steps" / f"{s}.json").read_text() for s in STEPS}


def _finished_at(run: Path) -> dict[str, str]:
    return {s: json.loads((run / "steps" / f"{s}.json").read_text())["finished_at"] for s in STEPS}


def _redone(proc: subprocess.CompletedProcess) -> list[str]:
    return [s for s in STEPS if f"[step] {s} ..." in proc.stdout]


def test_a_changed_setting_reruns_exactly_the_steps_that_depend_on_it(tiny_run, tmp_path):
    import shutil
    import time

    out = tmp_path / "run"
    shutil.copytree(tiny_run[0], out)
    cpt_weights = (out / "cpt" / "final" / "model.safetensors").read_bytes()
    ift_weights = (out / "ift" / "final" / "model.safetensors").read_bytes()
    time.sleep(1)  # finished_at has one-second resolution
    before = _finished_at(out)

    plan = cptift("plan", "configs/tiny.yaml", f"run.output_dir={out}", "ift.learning_rate=5e-4")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "cpt        done" in plan.stdout and "ift        rerun: ift.learning_rate" in plan.stdout
    assert "eval_ift   rerun: ift reruns" in plan.stdout and "export     rerun: " in plan.stdout
    # Keeping the training text changes the corpus cache only: preparation reruns, no training or evaluation.
    plan = cptift("plan", "configs/tiny.yaml", f"run.output_dir={out}", "data.keep_train_text=true")
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "prepare    rerun: data.keep_train_text" in plan.stdout
    assert all(f"{s:<11}done" in plan.stdout for s in STEPS if s != "prepare"), plan.stdout

    proc = cptift("run", "configs/tiny.yaml", f"run.output_dir={out}", "ift.learning_rate=5e-4")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _redone(proc) == ["ift", "eval_ift", "report", "export"]
    assert "[redo] ift: changed since it finished: ift.learning_rate" in proc.stdout
    after = _finished_at(out)
    assert [s for s in STEPS if after[s] == before[s]] == ["prepare", "eval_base", "cpt", "eval_cpt"]
    assert (out / "cpt" / "final" / "model.safetensors").read_bytes() == cpt_weights
    assert (out / "ift" / "final" / "model.safetensors").read_bytes() != ift_weights

    proc = cptift("run", "configs/tiny.yaml", f"run.output_dir={out}", "ift.learning_rate=5e-4",
                  "evals.max_new_tokens=6")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert _redone(proc) == ["eval_base", "eval_cpt", "eval_ift", "report", "export"]


def test_plan_eval_report_and_compare_commands_on_a_finished_run(tiny_run, tmp_path):
    out, _ = tiny_run
    plan = cptift("plan", "configs/tiny.yaml", f"run.output_dir={out}")
    assert plan.returncode == 0 and all(f"{s:<10} done" in plan.stdout for s in STEPS)
    result_path = tmp_path / "export-eval.json"
    ev = cptift("eval", "configs/tiny.yaml", f"run.output_dir={out}", "--model", str(out / "export"),
                "--out", str(result_path))
    assert ev.returncode == 0, ev.stderr[-3000:]
    exported = json.loads(result_path.read_text())
    ift = json.loads((out / "ift" / "eval.json").read_text())
    assert [m["name"] for m in exported["metrics"]] == [m["name"] for m in ift["metrics"]]
    ppl = {m["suite"]: m["value"] for m in exported["metrics"] if m["name"] == "perplexity"}
    ppl_ift = {m["suite"]: m["value"] for m in ift["metrics"] if m["name"] == "perplexity"}
    assert ppl == pytest.approx(ppl_ift, rel=0.02)  # the export is the IFT model, saved in bf16
    before = (out / "report" / "forgetting.json").read_text()
    assert cptift("report", str(out)).returncode == 0
    assert (out / "report" / "forgetting.json").read_text() == before
    cmp = cptift("compare", str(out), str(out), "--out", str(tmp_path / "compare"))
    assert cmp.returncode == 0 and "| domain | perplexity |" in cmp.stdout
