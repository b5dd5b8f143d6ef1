"""Export a trained checkpoint as a servable Hugging Face folder.

    cptift export configs/demo.yaml           # or the last step of `cptift run`

The folder holds ``*.safetensors``, ``config.json``, ``generation_config.json``
(stopping on the chat end-of-turn token), the tokenizer with its chat template,
and a ``README.md`` model card with the forgetting table. It loads with plain
``AutoModelForCausalLM.from_pretrained(path)`` (and in vLLM), which
``export_model`` checks by loading it back and generating one reply.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from stages import forgetting
from stages.config import PipelineConfig
from stages.modeling import load_model, load_tokenizer


def export_model(src: str, dst: Path, report_dir: Path, cfg: PipelineConfig) -> dict:
    """``src`` as a servable folder ``dst``, its model card from the run's ``report_dir`` (table and curves)."""
    report = json.loads((report_dir / "forgetting.json").read_text())
    partial = dst.with_name(dst.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tokenizer = load_tokenizer(src, cfg.model.trust_remote_code)
    model = load_model(src, cfg.model.dtype, trust_remote_code=cfg.model.trust_remote_code)
    gen = model.generation_config
    # Serving engines stop on generation_config's eos: make it the end-of-turn token.
    gen.eos_token_id, gen.pad_token_id = tokenizer.eos_token_id, tokenizer.pad_token_id
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "README.md").write_text(model_card(cfg, src, report))
    if (report_dir / "training_curves.png").is_file():  # the card's Markdown links it
        shutil.copy2(report_dir / "training_curves.png", partial / "training_curves.png")
    shutil.rmtree(dst, ignore_errors=True)
    partial.rename(dst)
    reply = check_export(dst, cfg.export.check_prompt, cfg.model.trust_remote_code)
    print(f"export check: {cfg.export.check_prompt!r} -> {reply!r}")
    return {"path": str(dst), "from": src, "check_prompt": cfg.export.check_prompt, "check_reply": reply}


def check_export(path: Path, prompt: str, trust_remote_code: bool = False, max_new_tokens: int = 40) -> str:
    """Load with no extra arguments, as a serving user would, and answer one chat prompt."""
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code)
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    enc = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def model_card(cfg: PipelineConfig, src: str, report: dict) -> str:
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [cptift, continued-pretraining, instruction-tuning]
---
# {cfg.run.name}

Adapted from `{cfg.model.path}` by cptift: continued pre-training on
{len(cfg.data.domain.sources)} domain source(s), then instruction fine-tuning on
{len(cfg.data.instructions.sources)} instruction source(s). Exported from `{Path(src).name}` of stage
`{cfg.export.from_stage}` in `{cfg.model.dtype}`.

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained("PATH")
model = AutoModelForCausalLM.from_pretrained("PATH")
```

## Evaluation (deltas against the base model)

{forgetting.render_markdown(report)}
"""
