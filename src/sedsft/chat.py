"""Conversations -> chat-templated token ids with labels on assistant tokens only.

The label mask is found from the rendered text, not from template-specific markers: the span
of each assistant turn is the difference between the conversation rendered up to that turn
(with the generation prompt) and rendered including it. This works for any chat template that
renders prefixes consistently (Llama 3, Qwen2.5, ChatML), and fails loudly otherwise.
"""

from __future__ import annotations

from sedsft.config import ConfigError

IGNORE_INDEX = -100


def prompt_messages(system_prompt: str, problem: str) -> list[dict]:
    """The system and user turns of a problem, the one place they are built: SFT conversations,
    RL prompts, diversity and evaluation prompts and the tiny model's pretraining texts all start
    with them, and a prompt that differs between training and evaluation costs accuracy."""
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": problem}]


def assistant_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The fully rendered text and the [start, end) character spans of assistant turns
    (content and end-of-turn token; trailing whitespace after the turn is left unlabelled)."""
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(before) or not full.startswith(through) or not through.startswith(before):
            raise ValueError("the chat template does not render conversation prefixes consistently; "
                             "assistant-only labels cannot be located")
        spans.append((len(before), len(through.rstrip())))
    return full, spans


def tokenize_conversation(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(input_ids, labels): labels equal input_ids on assistant tokens and IGNORE_INDEX elsewhere."""
    text, spans = assistant_spans(tokenizer, messages)
    if not spans:
        raise ValueError("the conversation has no assistant turn")
    # the template already wrote BOS and the other special tokens as text
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token_id, (start, end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        # overlap, not "starts inside": a template whose prompt ends in a space ("Assistant: ")
        # merges that space into the first content token, which must still be learnt
        inside = any(start < hi and end > lo for lo, hi in spans)
        labels.append(token_id if inside else IGNORE_INDEX)
    return list(encoded["input_ids"]), labels


def without_load_options(tokenizer):
    """Forget how the tokenizer was loaded, so that a folder it is saved into does not depend on
    the machine that made it: in offline mode transformers forces `local_files_only=True` and
    records it among the init kwargs that save_pretrained writes to tokenizer_config.json
    (transformers 5.17 tokenization_utils_base.py:1587-1589 and 1844), so an SFT model saved
    offline and one saved online differ in that one value."""
    tokenizer.init_kwargs.pop("local_files_only", None)
    return tokenizer


def load_tokenizer(path: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = without_load_options(AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code))
    if not tokenizer.chat_template:
        raise ConfigError(f"tokenizer at {path} has no chat template; use an instruct model or add one")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
