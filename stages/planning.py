"""Plan a run before it spends GPU hours: tokens, FLOPs, GPU-hours, memory per GPU, a ZeRO choice.

    cptift plan configs/demo.yaml model.path=configs/models/llama-3-8b-shape cpt.seq_len=4096 \\
        --nodes 2 --gpus-per-node 8 --gpu-memory 80GB [--mfu 0.4] [--gpu-tflops 989]
    print(render(build_plan(cfg, Cluster(nodes=2, gpus_per_node=8), model_shape(cfg.model.path))))

The model is built on the meta device from config.json alone; docs/multi-node.md explains the figures.

Compute (PaLM appendix B / Chinchilla): FLOPs/token = 6 * N + 12 * n_layers * hidden * seq_len, where
N = every parameter but the input embedding (a lookup; the lm head counts even when tied) and the second
term is attention's QK^T and AV, not halved for the causal mask. tokens = max_steps * micro_batch_size *
grad_accum_steps * n_gpus * seq_len (an upper bound for IFT). GPU-hours = tokens * FLOPs/token /
(MFU * peak FLOP/s) / 3600. Gradient checkpointing runs one more forward (~8N hardware FLOPs per token);
MFU counts model FLOPs (6N) only.

Memory per GPU = model states + activations, which must fit in 90% of the GPU (10% headroom for the CUDA
context, fragmentation and communication buffers). Model states are DeepSpeed's estimators (buffer factor
1.5); it has no ZeRO-1 estimator, so ZeRO-1 = ZeRO-2 + 2 * P * (1 - 1/n_gpus), the 16-bit gradients
ZeRO-2 partitions away. Activations are an estimate (bf16, SDPA / flash-attn: no s x s scores kept), in
bytes per token with h_q = n_heads * head_dim, h_kv = n_kv_heads * head_dim, I = intermediate, V = vocab:

    layer  A = 2 * (2h [RMSNorm inputs] + h [q/k/v_proj input] + h_q + 2 h_kv [q, k, v]
                    + h_q [o_proj input] + h [MLP input] + 2I [gate, up] + 2I [act(gate), act(gate) * up])
    logits   = V * (2 + 4 + 4)            bf16 logits, fp32 upcast, fp32 softmax / gradient
    without checkpointing: n_layers * A + logits
    with checkpointing:    n_layers * 2h + A + logits      layer inputs + one layer recomputed

times micro_batch_size * seq_len tokens.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from stages.config import ConfigError, PipelineConfig, TrainConfig
from stages.modeling import ModelError, resolve_model

GIB = 2**30
HEADROOM = 0.9  # share of GPU memory a plan may fill; the rest is CUDA context, fragmentation, NCCL buffers
BUFFER_FACTOR = 1.5  # DeepSpeed's default additional_buffer_factor
BF16 = 2  # bytes per activation element
LOGIT_BYTES = 2 + 4 + 4  # per vocab entry per token: bf16 logits, fp32 upcast, fp32 softmax / its gradient
# Fastest first: less partitioning means less communication; checkpointing costs one more forward.
PREFERENCE = [("ZeRO-1", False), ("ZeRO-2", False), ("ZeRO-3", False),
              ("ZeRO-1", True), ("ZeRO-2", True), ("ZeRO-3", True), ("ZeRO-3-offload", True)]
DEEPSPEED_JSON = {"ZeRO-1": "configs/deepspeed/zero1.json", "ZeRO-2": "configs/deepspeed/zero2.json",
                  "ZeRO-3": "configs/deepspeed/zero3.json", "ZeRO-3-offload": "configs/deepspeed/zero3_offload.json"}


@dataclass(frozen=True)
class Cluster:
    nodes: int = 1  # machines
    gpus_per_node: int = 1  # GPUs (processes) per machine
    gpu_memory_bytes: int = 80 * 10**9  # memory of one GPU, bytes
    mfu: float = 0.40  # model FLOPs utilisation assumed for GPU-hours
    gpu_tflops: float = 989.0  # peak dense bf16 TFLOP/s of one GPU (H100 SXM)

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.gpus_per_node < 1:
            raise ConfigError("--nodes and --gpus-per-node must be at least 1")
        if not 0 < self.mfu <= 1 or self.gpu_tflops <= 0 or self.gpu_memory_bytes <= 0:
            raise ConfigError("--mfu must be in (0, 1]; --gpu-tflops and --gpu-memory must be positive")

    @property
    def gpus(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def usable_bytes(self) -> int:
        return int(self.gpu_memory_bytes * HEADROOM)


def parse_memory(text: str) -> int:
    """Bytes in ``80GB`` (80e9), ``80GiB`` (80 * 2**30) or ``80`` (GB)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(gib|gb)?\s*", text, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"--gpu-memory {text!r}: expected a size such as 80GB or 80GiB")
    unit = GIB if (match[2] or "").lower() == "gib" else 10**9
    return int(float(match[1]) * unit)


@dataclass(frozen=True)
class ModelShape:
    total_params: int  # unique parameters; tied weights count once
    largest_layer_params: int  # most parameters owned directly by one module (DeepSpeed's "largest layer")
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool

    @property
    def matmul_params(self) -> int:
        """N of the FLOPs formula: all parameters but the input embedding; the lm head counts even when tied."""
        return self.total_params if self.tied_embeddings else self.total_params - self.vocab_size * self.hidden_size


def model_shape(path: str) -> ModelShape:
    """Parameter counts and Llama dimensions of ``model.path``, from its config.json alone."""
    from transformers import AutoConfig

    folder = resolve_model(path) if path.startswith("builtin:") else _config_folder(path)
    try:
        config = AutoConfig.from_pretrained(folder)  # never trust_remote_code: only architectures transformers ships
    except ValueError as exc:
        raise ModelError(f"model.path: {folder}: {exc}") from None
    total, largest = _count_params(config)
    return ModelShape(total_params=total, largest_layer_params=largest, **_llama_dims(config))


def _config_folder(path: str) -> str:
    if not (Path(path) / "config.json").is_file():
        raise ModelError(f"model.path: {path} has no config.json; `cptift plan` reads a local model folder")
    return path


def _count_params(config) -> tuple[int, int]:
    """(total, largest layer) counted as DeepSpeed's ``estimate_zero3_model_states_mem_needs_all_live`` does."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: allocates nothing, reads no weights
        model = AutoModelForCausalLM.from_config(config)
    # DeepSpeed de-duplicates tied weights by data_ptr(), which is 0 for every meta tensor; id() does the same job.
    total = sum({id(p): p.numel() for p in model.parameters()}.values())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def _llama_dims(config) -> dict:
    needed = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [name for name in needed if getattr(config, name, None) is None]
    if missing:
        raise ModelError(f"{config.model_type}: the activation estimate needs a Llama-shaped config; missing {missing}")
    heads = config.num_attention_heads
    return dict(hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
                num_layers=config.num_hidden_layers, num_heads=heads,
                num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
                vocab_size=config.vocab_size, tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)))


def flops_per_token(shape: ModelShape, seq_len: int) -> int:
    """Model FLOPs per trained token: 6N for the matmuls plus 12 * L * h * s for attention (fwd + bwd)."""
    return 6 * shape.matmul_params + 12 * shape.num_layers * shape.hidden_size * seq_len


def layer_activation_bytes(shape: ModelShape) -> int:
    """Bytes one decoder layer keeps per token for its backward (bf16, SDPA / flash attention)."""
    h, i = shape.hidden_size, shape.intermediate_size
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    elements = 2 * h + h + (q + 2 * kv) + q + h + 2 * i + i + i  # see the module docstring, term by term
    return BF16 * elements


def activation_bytes(shape: ModelShape, micro_batch_size: int, seq_len: int, checkpointing: bool) -> int:
    """Estimated activation bytes per GPU for one micro-batch, with or without gradient checkpointing."""
    logits = shape.vocab_size * LOGIT_BYTES
    if checkpointing:
        # HF checkpoints each decoder layer: its input stays, one layer at a time is recomputed in backward.
        per_token = shape.num_layers * BF16 * shape.hidden_size + layer_activation_bytes(shape) + logits
    else:
        per_token = shape.num_layers * layer_activation_bytes(shape) + logits
    return micro_batch_size * seq_len * per_token


@dataclass(frozen=True)
class StagePlan:
    name: str  # cpt | ift
    train: TrainConfig
    global_batch_seqs: int  # sequences per optimizer step over all GPUs
    tokens: int  # trained tokens; an upper bound for IFT
    flops_per_token: int  # model FLOPs (6N + attention)
    gpu_hours: float  # at the cluster's MFU and peak
    activations: int  # bytes per GPU without gradient checkpointing (estimate)
    activations_checkpointed: int  # bytes per GPU with gradient checkpointing (estimate)

    @property
    def global_batch_tokens(self) -> int:
        return self.global_batch_seqs * self.train.seq_len

    @property
    def model_flops(self) -> int:
        return self.tokens * self.flops_per_token

    @property
    def recompute_flops(self) -> int:
        """Hardware FLOPs with gradient checkpointing: one more forward, a third of the model FLOPs."""
        return self.model_flops * 4 // 3


def stage_plan(name: str, train: TrainConfig, shape: ModelShape, cluster: Cluster) -> StagePlan:
    seqs = train.micro_batch_size * train.grad_accum_steps * cluster.gpus
    tokens = train.max_steps * seqs * train.seq_len
    per_token = flops_per_token(shape, train.seq_len)
    gpu_hours = tokens * per_token / (cluster.mfu * cluster.gpu_tflops * 1e12) / 3600
    return StagePlan(name, train, seqs, tokens, per_token, gpu_hours,
                     activation_bytes(shape, train.micro_batch_size, train.seq_len, checkpointing=False),
                     activation_bytes(shape, train.micro_batch_size, train.seq_len, checkpointing=True))


@dataclass(frozen=True)
class ModelStates:
    zero: str  # ZeRO-1 | ZeRO-2 | ZeRO-3 | ZeRO-3-offload
    deepspeed: str  # the DeepSpeed JSON that selects it
    gpu_bytes: int  # params, gradients and optimizer states per GPU
    cpu_bytes_per_node: int  # DeepSpeed's CPU figure per node (for offload: the offloaded states)


def model_states(shape: ModelShape, cluster: Cluster) -> list[ModelStates]:
    """Per-GPU model-state memory under each ZeRO variant, from DeepSpeed's estimators."""
    zero2, zero3 = _deepspeed_estimators()
    p, largest, per_node, nodes = shape.total_params, shape.largest_layer_params, cluster.gpus_per_node, cluster.nodes
    cpu2, gpu2 = zero2(p, per_node, nodes, cpu_offload=False, additional_buffer_factor=BUFFER_FACTOR)
    cpu3, gpu3, _ = zero3(p, largest, per_node, nodes, cpu_offload=False, cpu_offload_params=False,
                          zero_init=True, additional_buffer_factor=BUFFER_FACTOR)
    cpu_off, gpu_off, _ = zero3(p, largest, per_node, nodes, cpu_offload=True, cpu_offload_params=True,
                                zero_init=True, additional_buffer_factor=BUFFER_FACTOR)
    # DeepSpeed has no ZeRO-1 estimator. ZeRO-1 shards optimizer states and fp32 master weights like
    # ZeRO-2 but every GPU keeps the full 16-bit gradients: add back the share ZeRO-2 partitions away.
    gpu1 = gpu2 + int(2 * p * (1 - 1 / cluster.gpus))
    figures = {"ZeRO-1": (gpu1, cpu2), "ZeRO-2": (gpu2, cpu2), "ZeRO-3": (gpu3, cpu3),
               "ZeRO-3-offload": (gpu_off, cpu_off)}
    return [ModelStates(zero, DEEPSPEED_JSON[zero], gpu, cpu) for zero, (gpu, cpu) in figures.items()]


def _deepspeed_estimators():
    # Importing DeepSpeed without a GPU (a login node) warns that it fell back to the CPU accelerator; the
    # estimators run no kernels. DeepSpeed sets its logger's level on import, so only a global switch helps.
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    finally:
        logging.disable(previous)
    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


@dataclass(frozen=True)
class MemoryOption:
    states: ModelStates
    gradient_checkpointing: bool
    activation_bytes: int  # per GPU (estimate)

    @property
    def gpu_bytes(self) -> int:
        return self.states.gpu_bytes + self.activation_bytes

    @property
    def label(self) -> str:
        return self.states.zero + (" + checkpointing" if self.gradient_checkpointing else "")


def memory_options(states: list[ModelStates], stage: StagePlan) -> list[MemoryOption]:
    """Every ZeRO variant with and without checkpointing for one stage, fastest first (PREFERENCE)."""
    by_name = {s.zero: s for s in states}
    return [MemoryOption(by_name[zero], ckpt, stage.activations_checkpointed if ckpt else stage.activations)
            for zero, ckpt in PREFERENCE]


@dataclass(frozen=True)
class Recommendation:
    stage: str
    choice: MemoryOption | None  # the fastest option that fits; None when none does
    smallest: MemoryOption  # the option needing the least GPU memory, quoted when none fits
    usable_bytes: int  # GPU memory after headroom


def recommend(stage: str, options: list[MemoryOption], cluster: Cluster) -> Recommendation:
    fits = [o for o in options if o.gpu_bytes <= cluster.usable_bytes]
    smallest = min(options, key=lambda o: o.gpu_bytes)
    return Recommendation(stage, fits[0] if fits else None, smallest, cluster.usable_bytes)


@dataclass(frozen=True)
class RunPlan:
    model_path: str
    shape: ModelShape
    cluster: Cluster
    stages: list[StagePlan]
    states: list[ModelStates]
    recommendations: list[Recommendation]


def build_plan(cfg: PipelineConfig, cluster: Cluster, shape: ModelShape) -> RunPlan:
    stages = [stage_plan(name, getattr(cfg, name), shape, cluster) for name in ("cpt", "ift")]
    states = model_states(shape, cluster)
    recs = [recommend(s.name, memory_options(states, s), cluster) for s in stages]
    return RunPlan(cfg.model.path, shape, cluster, stages, states, recs)


def gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.2f} GiB"


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 1 else f"{h:.2g}"


def _count(n: float) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.2f}{suffix}"
    return str(n)


def render(plan: RunPlan) -> str:
    parts = [_render_header(plan), *(_render_stage(plan, s) for s in plan.stages),
             _render_memory(plan), _render_fit(plan), _render_recommendations(plan)]
    return "\n\n".join(parts)


def _render_header(plan: RunPlan) -> str:
    c, s = plan.cluster, plan.shape
    gpus = f"{_plural(c.nodes, 'node')} x {_plural(c.gpus_per_node, 'GPU')} = {_plural(c.gpus, 'GPU')}"
    return "\n".join([
        f"plan: {gpus}, {c.gpu_memory_bytes / 1e9:g} GB = {gib(c.gpu_memory_bytes)} each, "
        f"{gib(c.usable_bytes)} usable (10% headroom: CUDA context, fragmentation, communication buffers)",
        f"model: {plan.model_path}: {_count(s.total_params)} parameters ({s.total_params:,}), "
        f"N = {_count(s.matmul_params)} in matmuls (input embedding excluded, lm head included), "
        f"largest layer {_count(s.largest_layer_params)}",
        f"compute: {c.gpu_tflops:g} TFLOP/s peak per GPU at MFU {c.mfu:.2f} (assumed); "
        f"FLOPs/token = 6 x N + 12 x {s.num_layers} layers x {s.hidden_size} hidden x seq_len",
    ])


def _render_stage(plan: RunPlan, stage: StagePlan) -> str:
    t, gpus = stage.train, _plural(plan.cluster.gpus, "GPU")
    bound = " (upper bound: IFT examples are at most seq_len)" if stage.name == "ift" else ""
    return "\n".join([
        f"{stage.name}: {t.max_steps:,} steps x {stage.global_batch_seqs:,} sequences ({t.micro_batch_size} micro x "
        f"{t.grad_accum_steps} accum x {gpus}) x {t.seq_len:,} tokens = {stage.global_batch_tokens:,} tokens/step",
        f"  tokens {_count(stage.tokens)}{bound}",
        f"  model FLOPs {stage.model_flops:.3e} ({stage.flops_per_token:.3e} per token) -> "
        f"{_hours(stage.gpu_hours)} GPU-hours, {_hours(stage.gpu_hours / plan.cluster.gpus)} h wall on {gpus}",
        f"  with gradient checkpointing the hardware runs ~8N per token: {stage.recompute_flops:.3e} FLOPs "
        "(MFU above counts model FLOPs)",
        f"  configured: deepspeed={t.deepspeed or '(none)'} gradient_checkpointing={_flag(t.gradient_checkpointing)}",
    ])


def _render_memory(plan: RunPlan) -> str:
    lines = [f"model states per GPU (DeepSpeed estimators, additional_buffer_factor {BUFFER_FACTOR}; "
             "ZeRO-1 = ZeRO-2 + 2 x P x (1 - 1/n_gpus) unpartitioned 16-bit gradients):",
             f"  {'option':<16}{'per GPU':>12}{'CPU per node':>16}  deepspeed config"]
    lines += [f"  {s.zero:<16}{gib(s.gpu_bytes):>12}{gib(s.cpu_bytes_per_node):>16}  {s.deepspeed}"
              for s in plan.states]
    lines += ["  (CPU per node: DeepSpeed's figure; without offload, what loading the model in each process needs)",
              "activations per GPU (estimate: Llama decoder, bf16, SDPA/flash attention, logits in fp32):",
              f"  {'stage':<6}{'micro x seq_len':>16}{'no checkpointing':>20}{'checkpointing':>16}"]
    lines += [f"  {s.name:<6}{f'{s.train.micro_batch_size} x {s.train.seq_len}':>16}"
              f"{gib(s.activations):>20}{gib(s.activations_checkpointed):>16}" for s in plan.stages]
    return "\n".join(lines)


def _render_fit(plan: RunPlan) -> str:
    usable = plan.cluster.usable_bytes
    lines = [f"per GPU: model states + activations (usable {gib(usable)}):",
             f"  {'option':<30}" + "".join(f"{r.stage:>18}" for r in plan.recommendations)]
    for row in zip(*(memory_options(plan.states, s) for s in plan.stages)):
        cells = [f"{gib(o.gpu_bytes)} {'fits' if o.gpu_bytes <= usable else 'over'}" for o in row]
        lines.append(f"  {row[0].label:<30}" + "".join(f"{cell:>18}" for cell in cells))
    return "\n".join(lines)


def _render_recommendations(plan: RunPlan) -> str:
    lines = [_recommendation_line(r) for r in plan.recommendations]
    return "\n".join(["recommendation (fastest option that fits):", *lines])


def _recommendation_line(rec: Recommendation) -> str:
    name, pick, low = rec.stage, rec.choice, rec.smallest
    if pick is None:
        return (f"  {name}: does not fit: the smallest option, {low.label}, needs {gib(low.gpu_bytes)} per GPU "
                f"({gib(low.states.gpu_bytes)} model states + {gib(low.activation_bytes)} activations) against "
                f"{gib(rec.usable_bytes)} usable; lower {name}.micro_batch_size or {name}.seq_len, "
                "add GPUs or nodes, or train LoRA adapters instead of all weights")
    line = (f"  {name}: {pick.label}, {gib(pick.gpu_bytes)} of {gib(rec.usable_bytes)} per GPU -> "
            f"{name}.deepspeed={pick.states.deepspeed} "
            f"{name}.gradient_checkpointing={_flag(pick.gradient_checkpointing)}")
    if pick.states.zero == "ZeRO-3-offload":
        line += f" (needs {gib(pick.states.cpu_bytes_per_node)} CPU memory per node)"
    return line
