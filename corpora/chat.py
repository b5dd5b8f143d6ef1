"""Render instruction records with the model's chat template and mask the prompt.

    ids, labels = render_example(tokenizer, messages)

``labels`` equals ``ids`` on the tokens of every assistant message and on the
end-of-turn token that closes it (so the model learns to stop), and -100 on
everything else: system and user turns, the template's role headers, and any
separator the template adds after the end-of-turn token.

The spans are found on the rendered *text*: the template renders the prefix
up to each assistant turn (``add_generation_prompt=True``) and the
conversation through that turn; the turn is the difference. Tokens are mapped
to spans by their character offsets, so BPE merges at span edges cannot shift
the mask by a token.
"""

from __future__ import annotations

IGNORE_INDEX = -100


class TemplateError(ValueError):
    """The chat template does not render prefixes consistently."""


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the (start, end) character spans that carry loss."""
    end_of_turn = tokenizer.eos_token
    spans = []
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not through.startswith(prefix):
            raise TemplateError("the chat template renders a different prefix once the reply is added")
        stop = through.find(end_of_turn, len(prefix) + len(msg["content"]))
        end = stop + len(end_of_turn) if stop >= 0 else len(through)
        spans.append((len(prefix), end))
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    for start, end in spans:
        if end > len(text):
            raise TemplateError("an earlier turn renders differently inside the full conversation")
    return text, spans


def render_example(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [
        tok if any(start <= lo < end for start, end in spans) else IGNORE_INDEX
        for tok, (lo, _hi) in zip(ids, enc["offset_mapping"])
    ]
    return ids, labels


def prompt_text(tokenizer, messages: list[dict]) -> str:
    """The text a model is given to answer: every turn before the last, plus the reply header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
