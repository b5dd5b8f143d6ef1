"""IFT labels are -100 exactly on prompt tokens, checked against apply_chat_template."""

import pytest

from corpora.chat import IGNORE_INDEX, render_example


def _ids(tokenizer, messages, **kw):
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _expected_labels(tokenizer, messages):
    """Token-level reference: per assistant turn, tokens after the generation prompt up to end-of-turn."""
    full = _ids(tokenizer, messages)
    labels = [IGNORE_INDEX] * len(full)
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        start = len(_ids(tokenizer, messages[:i], add_generation_prompt=True))
        end = full.index(tokenizer.eos_token_id, start) + 1  # the end-of-turn token carries loss
        labels[start:end] = full[start:end]
    return full, labels


CONVERSATIONS = [
    [{"role": "user", "content": "What does json.dumps do?"},
     {"role": "assistant", "content": "Serialize obj to a JSON formatted str."}],
    [{"role": "system", "content": "Answer briefly."},
     {"role": "user", "content": "What is 2 + 2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "And 3 + 3?"},
     {"role": "assistant", "content": " Six, written 6.\nDone."}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_labels_match_chat_template_token_by_token(any_tokenizer, messages):
    ids, labels = render_example(any_tokenizer, messages)
    ref_ids, ref_labels = _expected_labels(any_tokenizer, messages)
    assert ids == ref_ids
    assert labels == ref_labels


def test_prompt_masked_and_reply_plus_end_of_turn_trained(any_tokenizer):
    messages = CONVERSATIONS[0]
    ids, labels = render_example(any_tokenizer, messages)
    trained = [t for t, l in zip(ids, labels) if l != IGNORE_INDEX]
    assert any_tokenizer.decode(trained) == messages[1]["content"] + any_tokenizer.eos_token
    prompt_len = len(_ids(any_tokenizer, messages[:1], add_generation_prompt=True))
    assert all(l == IGNORE_INDEX for l in labels[:prompt_len])
    assert labels[-1] == IGNORE_INDEX  # the template's newline after <|im_end|> is not a target
