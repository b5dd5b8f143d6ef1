"""`cptift plan`: parameter counts, FLOPs, DeepSpeed's memory figures, activation estimates, the choice."""

import json

import pytest
import torch
from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
from transformers import LlamaConfig, LlamaForCausalLM

from stages import planning
from stages.cli import main
from stages.config import ConfigError, TrainConfig, load_config
from stages.modeling import ModelError
from stages.planning import Cluster, ModelShape

SHAPE_8B = "configs/models/llama-3-8b-shape"
GIB = 2**30
CPT_4K = ["cpt.seq_len=4096", "cpt.micro_batch_size=1", "cpt.grad_accum_steps=8", "cpt.max_steps=1000"]
LLAMA_70B = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=8192, intermediate_size=28672,
                 num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8, vocab_size=128256,
                 max_position_embeddings=8192, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def shape_8b() -> ModelShape:
    return planning.model_shape(SHAPE_8B)


def gib(n_bytes: int) -> str:
    return f"{n_bytes / GIB:.2f} GiB"


def train(**overrides) -> TrainConfig:
    settings = dict(max_steps=1000, seq_len=4096, micro_batch_size=1, grad_accum_steps=8, warmup_steps=10)
    return TrainConfig(**settings | overrides)


def cpt_choice(shape, cluster, **overrides) -> planning.MemoryOption | None:
    stage = planning.stage_plan("cpt", train(**overrides), shape, cluster)
    options = planning.memory_options(planning.model_states(shape, cluster), stage)
    return planning.recommend("cpt", options, cluster).choice


def test_8b_shape_counts_match_a_meta_llama(shape_8b):
    config = LlamaConfig.from_json_file(f"{SHAPE_8B}/config.json")
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert shape_8b.total_params == sum(p.numel() for p in model.parameters())
    assert 8.0e9 < shape_8b.total_params < 8.1e9
    assert shape_8b.largest_layer_params == 128256 * 4096  # the embedding (and the untied lm head)
    assert shape_8b.matmul_params == shape_8b.total_params - 128256 * 4096


def test_tied_embeddings_count_once_and_stay_in_the_flops(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        dict(LLAMA_70B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=1000, tie_word_embeddings=True)))
    shape = planning.model_shape(str(tmp_path))
    layer = 4 * 64 * 16 * 2 + 2 * 64 * 16 * 2 + 3 * 64 * 128 + 2 * 64  # q,o + k,v + MLP + two norms
    assert shape.total_params == 1000 * 64 + 2 * layer + 64
    assert shape.matmul_params == shape.total_params  # the tied lm head is still a matmul


def test_a_folder_without_config_json_is_a_user_error(tmp_path, capsys):
    with pytest.raises(ModelError, match="no config.json"):
        planning.model_shape(str(tmp_path))
    assert main(["plan", "configs/demo.yaml", f"model.path={tmp_path}", f"run.output_dir={tmp_path}"]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("text, n_bytes", [("80GB", 80 * 10**9), ("80GiB", 80 * GIB), ("80", 80 * 10**9),
                                           ("24gb", 24 * 10**9), ("40.5GiB", int(40.5 * GIB))])
def test_parse_memory(text, n_bytes):
    assert planning.parse_memory(text) == n_bytes


def test_bad_gpu_memory_is_rejected():
    with pytest.raises(ConfigError, match="80GB or 80GiB"):
        planning.parse_memory("80 gigs")


def test_model_states_are_deepspeeds_estimates(shape_8b):
    cluster = Cluster(nodes=2, gpus_per_node=8)
    p, largest = shape_8b.total_params, shape_8b.largest_layer_params
    cpu2, gpu2 = estimate_zero2_model_states_mem_needs(p, 8, 2, cpu_offload=False, additional_buffer_factor=1.5)
    cpu3, gpu3, _ = estimate_zero3_model_states_mem_needs(p, largest, 8, 2, cpu_offload=False,
                                                          cpu_offload_params=False, zero_init=True)
    cpu_off, gpu_off, _ = estimate_zero3_model_states_mem_needs(p, largest, 8, 2, cpu_offload=True,
                                                                cpu_offload_params=True, zero_init=True)
    gpu1 = gpu2 + int(2 * p * (1 - 1 / 16))  # ZeRO-1 also keeps the full 16-bit gradients
    states = {s.zero: (s.gpu_bytes, s.cpu_bytes_per_node, s.deepspeed)
              for s in planning.model_states(shape_8b, cluster)}
    assert states == {"ZeRO-1": (gpu1, cpu2, "configs/deepspeed/zero1.json"),
                      "ZeRO-2": (gpu2, cpu2, "configs/deepspeed/zero2.json"),
                      "ZeRO-3": (gpu3, cpu3, "configs/deepspeed/zero3.json"),
                      "ZeRO-3-offload": (gpu_off, cpu_off, "configs/deepspeed/zero3_offload.json")}


def test_cli_plan_prints_the_estimates_a_recommendation_and_the_steps(shape_8b, tmp_path, capsys):
    argv = ["plan", "configs/demo.yaml", f"model.path={SHAPE_8B}", *CPT_4K, f"run.output_dir={tmp_path}",
            "--nodes", "2", "--gpus-per-node", "8", "--gpu-memory", "80GB"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    for s in planning.model_states(shape_8b, Cluster(nodes=2, gpus_per_node=8)):
        assert f"{s.zero:<16}{gib(s.gpu_bytes):>12}{gib(s.cpu_bytes_per_node):>16}  {s.deepspeed}" in out
    p = shape_8b.total_params
    _, gpu2 = estimate_zero2_model_states_mem_needs(p, 8, 2, cpu_offload=False)
    assert gib(gpu2) in out and gib(gpu2 + int(2 * p * (1 - 1 / 16))) in out
    assert "cpt: ZeRO-1, 62.79 GiB of 67.06 GiB per GPU -> cpt.deepspeed=configs/deepspeed/zero1.json" in out
    assert "ift: " in out.split("recommendation")[1]
    assert "prepare    pending" in out and "export     pending" in out  # the step states stay


def test_flops_are_6n_plus_the_attention_term(shape_8b):
    cluster = Cluster(nodes=2, gpus_per_node=8, mfu=0.5, gpu_tflops=1000)
    stage = planning.stage_plan("cpt", train(), shape_8b, cluster)
    tokens = 1000 * (1 * 8 * 16) * 4096
    n = 8_030_261_248 - 128256 * 4096
    assert stage.global_batch_seqs == 128 and stage.tokens == tokens
    assert stage.model_flops == 6 * n * tokens + 12 * 32 * 4096 * 4096 * tokens
    assert stage.gpu_hours == pytest.approx(stage.model_flops / (0.5 * 1000e12) / 3600)
    assert stage.recompute_flops == stage.model_flops * 4 // 3


TINY = ModelShape(total_params=0, largest_layer_params=0, hidden_size=64, intermediate_size=128, num_layers=2,
                  num_heads=4, num_kv_heads=2, head_dim=16, vocab_size=1000, tied_embeddings=True)


def test_activation_formula_by_hand_on_a_tiny_shape():
    # per layer: norms 2*64 + qkv input 64 + q,k,v 64+32+32 + attn out 64 + mlp input 64 + gate,up 256
    # + act 128 + act*up 128 = 960 elements = 1920 bytes; logits 1000 * 10 bytes per token
    assert planning.layer_activation_bytes(TINY) == 1920
    assert planning.activation_bytes(TINY, 2, 16, checkpointing=False) == 32 * (2 * 1920 + 10000)
    assert planning.activation_bytes(TINY, 2, 16, checkpointing=True) == 32 * (2 * 64 * 2 + 1920 + 10000)


def test_activations_shrink_with_checkpointing_and_grow_linearly(shape_8b):
    plain = planning.activation_bytes(shape_8b, 1, 4096, checkpointing=False)
    assert planning.activation_bytes(shape_8b, 1, 4096, checkpointing=True) < plain
    assert planning.activation_bytes(shape_8b, 2, 4096, checkpointing=False) == 2 * plain


def test_recommends_zero2_when_zero1_is_too_big(shape_8b):
    choice = cpt_choice(shape_8b, Cluster(nodes=2, gpus_per_node=8, gpu_memory_bytes=60 * 10**9))
    assert (choice.states.zero, choice.gradient_checkpointing) == ("ZeRO-2", False)


def test_larger_micro_batches_need_zero3_then_checkpointing(shape_8b):
    cluster = Cluster(nodes=2, gpus_per_node=8)
    two = cpt_choice(shape_8b, cluster, micro_batch_size=2)
    assert (two.states.zero, two.gradient_checkpointing) == ("ZeRO-3", False)
    four = cpt_choice(shape_8b, cluster, micro_batch_size=4)
    assert (four.states.zero, four.gradient_checkpointing) == ("ZeRO-1", True)


def test_70b_on_one_24gb_gpu_does_not_fit(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_70B))
    argv = ["plan", "configs/demo.yaml", f"model.path={tmp_path}", "cpt.seq_len=8192", "cpt.micro_batch_size=1",
            f"run.output_dir={tmp_path / 'run'}", "--gpu-memory", "24GB"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("  cpt: "))
    assert "does not fit: the smallest option, ZeRO-3-offload + checkpointing" in line
    assert "cpt.micro_batch_size or cpt.seq_len, add GPUs or nodes, or train LoRA" in line


def test_ift_tokens_are_labelled_an_upper_bound(shape_8b):
    cfg = load_config("configs/demo.yaml", [f"model.path={SHAPE_8B}"])
    text = planning.render(planning.build_plan(cfg, Cluster(), shape_8b))
    cpt_tokens, ift_tokens = [line for line in text.splitlines() if line.startswith("  tokens")]
    assert "upper bound" in ift_tokens and "upper bound" not in cpt_tokens
    assert "estimate" in text
