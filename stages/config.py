"""The typed pipeline config: YAML plus dotted ``key=value`` overrides.

    from stages.config import load_config
    cfg = load_config("configs/demo.yaml", ["cpt.max_steps=10", "run.output_dir=runs/x"])

Every section is a dataclass whose fields carry their unit in the docstring
comment beside them. Loading is strict: an unknown or misspelt key fails with
the file, the dotted key and the closest valid key, before any model loads.
Cross-field rules live in ``__post_init__`` so they run on every construction.
The strict YAML-to-dataclass machinery (``build``, one-line ``ConfigError``
messages) is ``stages.typed_yaml``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from corpora.manifest import write_atomic
from corpora.pii import PII_TYPES
from stages.typed_yaml import ConfigError, build, parse_yaml, resolve_key, shown, to_dict


class Dtype(enum.StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"


class EvalParameters(enum.StrEnum):
    replicated = "replicated"  # every rank holds the whole model; batches are shared out
    zero3 = "zero3"  # parameters partitioned over ranks (DeepSpeed ZeRO-3), for models larger than one device


class Packing(enum.StrEnum):
    documents = "documents"  # packed rows, position_ids restart per document: no attention across documents
    stream = "stream"  # CPT only: packed rows, documents attend to the ones before them (for comparison)
    padded = "padded"  # IFT only: one example per row, padded to the longest in the batch


class LrSchedule(enum.StrEnum):
    cosine = "cosine"  # re-warm to the peak, re-decay by cosine to min_lr_ratio (arXiv 2308.04014, 2403.08763)
    wsd = "wsd"  # warmup-stable-decay: constant peak, then decay over the last decay_fraction (arXiv 2404.06395)


class DataExecutor(enum.StrEnum):
    local = "local"  # datatrove's local executor: engine.workers processes on this machine
    slurm = "slurm"  # datatrove's Slurm executor: one sbatch array job per stage, on a shared file system


class GateRule(enum.StrEnum):
    max_drop = "max_drop"  # forgetting: no matching metric may get worse by more than `relative` of its base value
    min_gain = "min_gain"  # learning: every matching metric must improve by at least `relative` of its base value


class GateAction(enum.StrEnum):
    warn = "warn"  # log and record in the report, go on
    fail = "fail"  # stop the pipeline with exit code 3 after the evaluation that broke the rule


class WandbMode(enum.StrEnum):
    offline = "offline"
    online = "online"
    disabled = "disabled"


@dataclass
class RunConfig:
    name: str = "demo"  # run name; also the W&B group
    output_dir: str = "runs/demo"  # run directory, relative to the working directory
    seed: int = 0  # seeds data splits, shuffling and model init
    collective_timeout_minutes: float = 30  # longest a rank waits for the others (a barrier, rank 0 preparing data)

    def __post_init__(self) -> None:
        if self.collective_timeout_minutes <= 0:
            raise ConfigError("run.collective_timeout_minutes must be positive")


@dataclass
class ModelConfig:
    path: str = "builtin:tiny"  # HF folder, or builtin:smollm2-135m-instruct / builtin:tiny
    dtype: Dtype = Dtype.bfloat16  # compute and save dtype
    attn_implementation: str = "auto"  # auto: flash_attention_2 on CUDA when importable, else sdpa
    trust_remote_code: bool = False  # run model code shipped in the folder (config.json auto_map); read it first


@dataclass
class SourceSet:
    sources: list[str] = field(default_factory=list)  # files, folders, globs or builtin:<name>
    text_field: str = "text"  # field holding the document text in JSONL/parquet/HF rows
    min_chars: int = 200  # documents shorter than this many characters are dropped
    max_documents: int = 0  # keep at most this many documents after cleaning (0 = all)
    val_fraction: float = 0.05  # share of documents held out for validation loss
    test_fraction: float = 0.1  # share of documents held out for the domain perplexity suite

    def __post_init__(self) -> None:
        if not 0 <= self.val_fraction + self.test_fraction < 1:
            raise ConfigError("val_fraction + test_fraction must be in [0, 1)")


@dataclass
class ReplayConfig:
    sources: list[str] = field(default_factory=list)  # general text mixed into CPT
    ratio: float = 0.0  # share of CPT blocks drawn from replay data, 0 to <1

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ConfigError(f"data.replay.ratio must be in [0, 1), got {self.ratio}")


@dataclass
class InstructionSet:
    sources: list[str] = field(default_factory=list)  # JSONL of messages or instruction/response
    test_fraction: float = 0.2  # share of records (by group) kept out of IFT for evaluation
    max_records: int = 0  # keep at most this many training records (0 = all)


@dataclass
class CleaningConfig:
    """Applied to the domain and the replay corpus; every step is counted in the data report."""

    max_chars: int = 0  # drop documents longer than this many characters (0 = no limit)
    repetition: bool = True  # drop documents whose lines / paragraphs / 10-grams repeat too much
    max_duplicate_paragraph_fraction: float = 0.5  # of paragraphs, and of characters in them (web filters: 0.3)
    # Of lines, of characters in them, and of characters in repeated 10-grams (web: 0.3 / 0.2 / 0.1).
    # API docs repeat signatures and separators: the stdlib docs reach 0.89 of lines.
    max_duplicate_line_fraction: float = 0.95
    near_dedup: bool = True  # MinHash near-duplicate removal (exact copies are removed with it)
    pii: list[str] = field(default_factory=lambda: list(PII_TYPES))  # types scrubbed (corpora.pii)

    def __post_init__(self) -> None:
        unknown = set(self.pii) - set(PII_TYPES)
        if unknown:
            raise ConfigError(f"data.cleaning.pii: unknown types {sorted(unknown)}; use {', '.join(PII_TYPES)}")
        for name in ("max_duplicate_paragraph_fraction", "max_duplicate_line_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ConfigError(f"data.cleaning.{name} must be in (0, 1]")


@dataclass
class SlurmOptions:
    partition: str = ""  # "" = the cluster's default partition
    time: str = "24:00:00"  # per task
    cpus_per_task: int = 1
    mem_per_cpu_gb: int = 2


@dataclass
class EngineConfig:
    """How CPT corpus preparation runs; the prepared shards do not depend on it except through tasks."""

    executor: DataExecutor = DataExecutor.local
    workers: int = 2  # processes (local) or concurrent array tasks (slurm)
    tasks: int = 8  # output shards per split, at most the number of input files
    slurm: SlurmOptions = field(default_factory=SlurmOptions)

    def __post_init__(self) -> None:
        if self.workers < 1 or self.tasks < 1:
            raise ConfigError("data.engine.workers and data.engine.tasks must be at least 1")


@dataclass
class DataConfig:
    domain: SourceSet = field(default_factory=SourceSet)
    instructions: InstructionSet = field(default_factory=InstructionSet)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    max_bad_fraction: float = 0.01  # fail when more than this share of input rows / files is unreadable
    cache_dir: str = ""  # prepared corpora, shared by runs ("" = $CPTIFT_CACHE/data, ~/.cache/cptift/data)
    keep_train_text: bool = False  # also keep the cleaned text of the training split (zstd JSONL), to inspect it


@dataclass
class TrainConfig:
    """Settings shared by CPT and IFT; the stages differ in defaults only."""

    max_steps: int = 100  # optimizer steps
    seq_len: int = 512  # tokens per packed CPT block / max tokens per IFT example
    micro_batch_size: int = 2  # sequences per device per forward pass
    grad_accum_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 1e-4  # peak learning rate
    min_lr_ratio: float = 0.1  # final LR as a share of the peak (cosine decay)
    warmup_steps: int = 10  # linear warm-up length in optimizer steps
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    max_grad_norm: float = 1.0  # gradient clipping threshold
    save_steps: int = 50  # checkpoint every this many steps (0 = only at the end)
    logging_steps: int = 5  # log loss every this many steps
    deepspeed: str = "configs/deepspeed/zero2.json"  # DeepSpeed JSON; "" trains without DeepSpeed
    gradient_checkpointing: bool = False  # recompute each layer's activations in backward (~1/3 more compute)
    packing: Packing = Packing.documents  # CPT: documents | stream; IFT: documents | padded
    lr_schedule: LrSchedule = LrSchedule.cosine  # cosine (re-warm, re-decay) or wsd
    decay_fraction: float = 0.2  # wsd: share of max_steps spent decaying at the end
    eval_steps: int = 0  # held-out domain and general loss every this many steps, at 0 and at the end (0 = off)
    eval_tokens: int = 4096  # tokens per held-out set scored at each evaluation (whole seq_len blocks, >= 1)

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.seq_len < 8 or self.micro_batch_size < 1:
            raise ConfigError("max_steps >= 1, seq_len >= 8 and micro_batch_size >= 1 are required")
        if self.warmup_steps >= self.max_steps:
            raise ConfigError(
                f"warmup_steps ({self.warmup_steps}) must be smaller than max_steps ({self.max_steps})"
            )
        if self.logging_steps < 1:
            raise ConfigError(f"logging_steps must be at least 1, got {self.logging_steps}")
        if self.save_steps % self.logging_steps:
            raise ConfigError(f"save_steps ({self.save_steps}) must be a multiple of logging_steps "
                              f"({self.logging_steps}): the NaN guard checks each logged loss before a save")
        if not 0 < self.decay_fraction <= 1:
            raise ConfigError(f"decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if self.eval_steps < 0:
            raise ConfigError(f"eval_steps must be 0 (off) or a number of steps, got {self.eval_steps}")
        if self.eval_tokens < 1:
            raise ConfigError(f"eval_tokens must be positive (it is rounded up to one seq_len block), "
                              f"got {self.eval_tokens}")
        if self.lr_schedule == LrSchedule.wsd and self.warmup_steps + self.decay_fraction * self.max_steps > \
                self.max_steps:
            raise ConfigError("wsd: warmup_steps + decay_fraction * max_steps must not exceed max_steps")


@dataclass
class SuiteConfig:
    perplexity: list[str] = field(default_factory=list)  # text sources; "split:domain/test" = held-out docs
    tasks: dict[str, str] = field(default_factory=dict)  # metric prefix -> task JSONL, builtin:<name>, lm_eval:<task|yaml>
    max_perplexity_tokens: int = 8192  # cap on scored tokens per perplexity source
    max_items: int = -1  # items per task in this suite (0 = all); -1 = evals.max_items


@dataclass
class GateConfig:
    after: str = "cpt"  # checkpoint whose evaluation the rule is checked after: cpt | ift
    suite: str = "general"  # general | domain
    metric: str = "*"  # metric names to match, a shell pattern ("facts/*", "perplexity")
    rule: GateRule = GateRule.max_drop
    relative: float = 0.10  # the threshold, as a share of the base value (0.10 = 10%)
    significant: bool = True  # count only changes whose paired 95% interval excludes zero
    action: GateAction = GateAction.fail

    def __post_init__(self) -> None:
        if self.after not in ("cpt", "ift"):
            raise ConfigError(f"evals.gates: after must be cpt or ift, got {self.after!r}")
        if not 0 <= self.relative < 1e6:
            raise ConfigError(f"evals.gates: relative must be a share >= 0 (0.10 = 10%), got {self.relative}")
        if not self.metric:
            raise ConfigError("evals.gates: metric is empty; use a name or a pattern such as \"*\"")


@dataclass
class EvalConfig:
    general: SuiteConfig = field(default_factory=SuiteConfig)
    domain: SuiteConfig = field(default_factory=SuiteConfig)
    batch_size: int = 8  # sequences per forward pass
    max_new_tokens: int = 48  # generation budget per answer
    max_items: int = 0  # evaluate at most this many items per task (0 = all)
    parameters: EvalParameters = EvalParameters.replicated  # how ranks hold the model while evaluating
    gates: list[GateConfig] = field(default_factory=list)  # rules checked after each evaluation (stages/gates.py)


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.offline  # offline needs no key; "online" needs WANDB_API_KEY
    project: str = "cptift"


@dataclass
class TrackingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass
class ExportConfig:
    from_stage: str = "ift"  # which stage's final checkpoint to export: cpt | ift
    check_prompt: str = "What does the json module do?"  # generated once after export as a smoke test

    def __post_init__(self) -> None:
        if self.from_stage not in ("cpt", "ift"):
            raise ConfigError(f"export.from_stage must be cpt or ift, got {self.from_stage!r}")


def _ift_defaults() -> TrainConfig:
    return TrainConfig(max_steps=60, seq_len=256, micro_batch_size=8, learning_rate=5e-5, warmup_steps=5)


@dataclass
class PipelineConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cpt: TrainConfig = field(default_factory=TrainConfig)
    ift: TrainConfig = field(default_factory=_ift_defaults)
    evals: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        if not self.data.domain.sources:
            raise ConfigError("data.domain.sources is empty: CPT needs at least one source")
        if not self.data.instructions.sources:
            raise ConfigError("data.instructions.sources is empty: IFT needs at least one source")
        if self.cpt.packing == Packing.padded:
            raise ConfigError("cpt.packing: padded is for IFT; CPT blocks are full (use documents or stream)")
        if self.ift.packing == Packing.stream:
            raise ConfigError("ift.packing: stream would let examples attend to each other; use documents or padded")


# ---------------------------------------------------------------- loading


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> PipelineConfig:
    """Read YAML, apply ``a.b=value`` overrides, and build the typed config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start}); save the config as UTF-8") from None
    raw = parse_yaml(text, str(path), "fix the file's YAML syntax") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    for item in overrides:
        _apply_override(raw, item, path)
    return build(PipelineConfig, raw, origin=str(path))


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, value = item.partition("=")
    where = f"override {shown(item)}"  # shortened: a value can be a whole YAML document
    if not sep or not key:
        raise ConfigError(f"{where}: expected dotted.key=value")
    # Validate the key now so that a typo names the closest valid key.
    resolve_key(PipelineConfig, key.split("."), origin=where)
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: {part} is not a section in {path}")
    node[leaf] = parse_yaml(value, where, "values are YAML: close the brackets, or quote the "
                            "value (key=\"'text'\") to pass it as a string") if value != "" else ""


def save_config(cfg: PipelineConfig, path: Path) -> None:
    """Write atomically: other ranks may be reading the previous copy."""
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    write_atomic(path, lambda tmp: tmp.write_text(text))
