"""The bad-input catalogue: what a user can get wrong, and what cptift says about it.

Each entry runs a real command (``cptift prepare``, in this process) against a
run directory whose data preparation has already completed, and asserts:

- exit code 2 and exactly one ``error:`` line that names the problem and the
  fix (the entry's expected fragments), with no traceback; or, where bad data is
  skipped and reported rather than fatal, the line in ``data/report.md``;
- nothing already completed was damaged: every file of the finished run has
  the digest it had before (``config.yaml``, the record of the last command
  line, and ``run.lock`` are the run's bookkeeping, not its results).

The catalogue is the table in docs/troubleshooting.md; entries that need a
training run (a NaN loss, a rank that dies, preemption) are tested where that
run is (test_reliability.py, test_multiprocess.py) and named in the table.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from stages.cli import main
from tests import jobs

BASE = ["configs/tiny.yaml", "tracking.wandb.mode=disabled"]
BOOKKEEPING = {"config.yaml", "run.lock"}


@dataclass
class Entry:
    id: str
    args: Callable[[Path], list[str]]  # extra arguments, given a scratch folder
    says: tuple[str, ...]  # fragments of the one error line (or of the report line)
    outcome: str = "error"  # error | report | warning
    config: Callable[[Path], str] | None = None  # a config file to use instead of configs/tiny.yaml
    setup: Callable[[Path, Path], None] = field(default=lambda scratch, run: None)


def _write(path: Path, data: bytes | str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return str(path)


def _jsonl(*rows) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def _doc(i: int) -> dict:
    return {"text": f"Document {i} about the licence terms of component {i}. " * 12}


def _model_copy(scratch: Path, change: Callable[[Path], None]) -> list[str]:
    from stages.modeling import TINY, resolve_model

    folder = scratch / "model"
    shutil.copytree(resolve_model(TINY), folder)
    change(folder)
    return [f"model.path={folder}"]


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _pickle_only(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")


def _custom_code(folder: Path) -> None:
    _edit_json(folder / "config.json", lambda c: c.update(auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"}))
    (folder / "modeling_x.py").write_text("raise SystemExit('remote code ran')\n")


def _no_eos(folder: Path) -> None:
    _edit_json(folder / "tokenizer_config.json", lambda c: c.update(eos_token=None))


def _no_chat_template(folder: Path) -> None:
    _edit_json(folder / "tokenizer_config.json", lambda c: c.pop("chat_template", None))
    (folder / "chat_template.jinja").unlink(missing_ok=True)


def _domain(scratch: Path, files: dict[str, bytes | str]) -> list[str]:
    folder = scratch / "corpus"
    for name, data in files.items():
        _write(folder / name, data)
    return [f"data.domain.sources=[{folder}]"]


def _instructions(scratch: Path, text: str) -> list[str]:
    return [f"data.instructions.sources=[{_write(scratch / 'sft.jsonl', text)}]"]


def _live_lock(scratch: Path, run: Path) -> None:
    """A lock held from another host (whose processes this host cannot see, so it counts as live)."""
    lock = {"host": "gpu-node-7", "pid": 4242, "started": 1.8e9, "slurm_job": "991"}
    (run / "run.lock").write_text(json.dumps(lock))


GOOD_DOCS = {f"good{i}.jsonl": _jsonl(*(_doc(10 * i + j) for j in range(10))) for i in range(3)}

CATALOGUE = [
    # -- the config and its overrides --
    Entry("misspelt key", lambda s: ["cpt.max_stepz=3"], ("cpt.max_stepz=3", "unknown key 'max_stepz'", "did you mean 'max_steps'")),
    Entry("misspelt section", lambda s: ["cptt.max_steps=3"], ("unknown key 'cptt'", "did you mean 'cpt'")),
    Entry("wrong type", lambda s: ["cpt.max_steps=ten"], ("cpt.max_steps: expected int, got 'ten'",)),
    Entry("value not in a choice", lambda s: ["model.dtype=float8"], ("model.dtype", "'float8' is not one of")),
    Entry("override without =", lambda s: ["cpt.max_steps"], ("expected dotted.key=value",)),
    Entry("warm-up longer than training", lambda s: ["cpt.warmup_steps=20"], ("warmup_steps (20)", "max_steps (12)")),
    Entry("checkpoint between loss checks", lambda s: ["cpt.save_steps=5"],
          ("save_steps (5) must be a multiple of logging_steps (2)",)),
    Entry("schedule without room", lambda s: ["cpt.lr_schedule=wsd", "cpt.decay_fraction=0.95", "cpt.warmup_steps=2"],
          ("decay_fraction",)),
    Entry("held-out shares add up to all", lambda s: ["data.domain.val_fraction=0.5", "data.domain.test_fraction=0.5"],
          ("val_fraction", "test_fraction")),
    Entry("missing config file", lambda s: [], ("config file not found",), config=lambda s: str(s / "nope.yaml")),
    Entry("YAML syntax error", lambda s: [], ("bad.yaml", "invalid YAML at line", "fix the file's YAML syntax"),
          config=lambda s: _write(s / "bad.yaml", "run: {name: x}\ncpt: {max_steps: 3\n")),
    Entry("config that is not a mapping", lambda s: [], ("top level must be a mapping",),
          config=lambda s: _write(s / "list.yaml", "- a\n- b\n")),
    # -- the model folder --
    Entry("missing model folder", lambda s: [f"model.path={s / 'no-such-model'}"], ("does not exist",)),
    Entry("folder that is not a model", lambda s: [f"model.path={s}"], ("has no config.json",)),
    Entry("unknown built-in model", lambda s: ["model.path=builtin:nope"], ("unknown built-in 'builtin:nope'",)),
    Entry("pickled weights only", lambda s: _model_copy(s, _pickle_only), ("only pickled weights", "safetensors")),
    Entry("model code in the folder", lambda s: _model_copy(s, _custom_code),
          ("ships its own model code", "model.trust_remote_code: true")),
    Entry("tokenizer without EOS", lambda s: _model_copy(s, _no_eos), ("no eos_token",)),
    Entry("tokenizer without chat template", lambda s: _model_copy(s, _no_chat_template),
          ("has no chat template; using ChatML",), outcome="warning"),
    # -- the corpora --
    Entry("no corpus file", lambda s: [f"data.domain.sources=[{s / 'missing' / '*.jsonl'}]"], ("no such file",)),
    Entry("empty corpus folder", lambda s: _domain(s, {"empty.jsonl": ""}), ("inputs are unreadable",)),
    Entry("binary corpus", lambda s: _domain(s, {"blob.jsonl": bytes(range(256)) * 64}),
          ("inputs are unreadable", "blob.jsonl")),
    Entry("malformed corpus", lambda s: _domain(s, {"bad.jsonl": "{not json\n" * 5}),
          ("inputs are unreadable", "bad.jsonl:1", "raise data.max_bad_fraction")),
    Entry("a few bad rows in a good corpus", lambda s: _domain(s, GOOD_DOCS | {"z.jsonl": "{broken\n"}) + [
        "data.max_bad_fraction=0.1"], ("z.jsonl", "1"), outcome="report"),
    Entry("nothing left after cleaning", lambda s: _domain(s, {"short.jsonl": _jsonl({"text": "tiny"}, {"text": "short"})}),
          ("no domain documents left",)),
    Entry("instruction row of no known shape", lambda s: _instructions(s, _jsonl({"question": "q", "answer": "a"})),
          ("sft.jsonl:1", "'messages'")),
    Entry("instruction row that is not JSON", lambda s: _instructions(s, "{oops\n"), ("sft.jsonl:1", "invalid JSON")),
    Entry("chat ending on the user", lambda s: _instructions(s, _jsonl({"messages": [{"role": "user", "content": "q"}]})),
          ("sft.jsonl:1", "last message must be the assistant's")),
    # -- the run directory --
    Entry("output directory under a file", lambda s: [f"run.output_dir={_write(s / 'a-file', 'x')}/run"],
          ("run.output_dir", "Not a directory", "choose a directory you can write")),
    Entry("run directory held by a live run", lambda s: [], ("in use by another run", "host gpu-node-7, PID 4242"),
          setup=_live_lock),
]


def _digests(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name not in BOOKKEEPING}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A run directory whose data preparation completed."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["prepare", *BASE, f"run.output_dir={run}"]) == 0
    return run


@pytest.mark.parametrize("entry", CATALOGUE, ids=[e.id for e in CATALOGUE])
def test_bad_input_says_what_and_how_to_fix_and_damages_nothing(entry, finished_run, tmp_path, capsys, caplog):
    before = _digests(finished_run)
    entry.setup(tmp_path, finished_run)
    config = entry.config(tmp_path) if entry.config else BASE[0]
    argv = ["prepare", config, *BASE[1:], f"run.output_dir={finished_run}", *entry.args(tmp_path)]
    try:
        code = main(argv)
    finally:
        (finished_run / "run.lock").unlink(missing_ok=True)
    out, err = capsys.readouterr()
    if entry.outcome == "error":
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1, f"exit {code}\n{err[-3000:]}"
        assert "Traceback" not in err, err[-3000:]
        for fragment in entry.says:
            assert fragment in errors[0], errors[0]
    else:
        assert code == 0, err[-3000:]
        text = (finished_run / "data" / "report.md").read_text() if entry.outcome == "report" else err + out + caplog.text
        assert all(f in text for f in entry.says), text[-3000:]
    if entry.outcome == "error":
        assert _digests(finished_run) == before, "a failed command changed completed work"


def test_the_catalogue_is_the_troubleshooting_table():
    table = (Path(__file__).parents[1] / "docs" / "troubleshooting.md").read_text()
    assert len(CATALOGUE) >= 25
    missing = [e.id for e in CATALOGUE if f"`{e.id}`" not in table]
    assert not missing, f"docs/troubleshooting.md lacks catalogue entries {missing}"


def test_a_disk_that_fills_up_during_a_save(finished_run, tmp_path):
    """A write that fails for want of space (here: a file-size limit, so no root or tmpfs is needed) while the
    base model is saved into a fresh cache: one line saying so and what to do, nothing completed changed, no
    half-written model left where the next run would trust it, and the same command then succeeds."""
    (finished_run / "run.lock").unlink(missing_ok=True)  # the in-process fixture's; this test's commands are children
    before = _digests(finished_run)
    cache = tmp_path / "cache"
    argv = [str(jobs.BIN / "cptift"), "prepare", *BASE, f"run.output_dir={finished_run}"]
    env = jobs.env() | {"CPTIFT_CACHE": str(cache)}

    def small_disk():  # every file this process writes stops at 100 kB (the model's weights are larger)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    full = subprocess.run(argv, cwd=jobs.ROOT, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=small_disk)
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert full.returncode == 2 and len(errors) == 1, full.stderr[-3000:]
    assert "no space left on the device" in errors[0] and "run the same command again" in errors[0]
    assert _digests(finished_run) == before
    assert not (cache / "models" / "tiny-llama").exists()  # only the partial folder, which is never read
    again = subprocess.run(argv, cwd=jobs.ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]


CUSTOM_MODEL = '''
from transformers import LlamaForCausalLM


class XForCausalLM(LlamaForCausalLM):
    ran_from_the_folder = True
'''


def test_trust_remote_code_true_runs_the_folders_own_code(tiny_model_dir, tmp_path, monkeypatch):
    """The opt-in works: with model.trust_remote_code the folder's own class is loaded (and computes what the
    plain model computes, being a plain subclass here); without it, check_model_folder refuses before anything runs."""
    import torch
    import transformers.dynamic_module_utils as dynamic

    from stages.modeling import ModelError, check_model_folder, load_model

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not ~/.cache/huggingface
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    _edit_json(folder / "config.json", lambda c: c.update(auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"}))
    (folder / "modeling_x.py").write_text(CUSTOM_MODEL)
    with pytest.raises(ModelError, match="ships its own model code"):
        check_model_folder(str(folder))
    check_model_folder(str(folder), trust_remote_code=True)
    custom = load_model(str(folder), trust_remote_code=True)
    assert type(custom).__name__ == "XForCausalLM" and custom.ran_from_the_folder
    plain = load_model(tiny_model_dir)
    ids = torch.arange(1, 17).unsqueeze(0)
    assert torch.equal(custom(input_ids=ids).logits, plain(input_ids=ids).logits)
