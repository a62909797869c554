"""Tests for sedsft.chat: assistant-only labels found from the rendered chat template."""

from __future__ import annotations

import pytest

from sedsft.chat import IGNORE_INDEX, assistant_spans, prompt_messages, tokenize_conversation
from sedsft.tinymodel import build_tokenizer

TEXTS = [
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "Ava has 3 apples. Ava buys 4 more and then gives 2 away. How many apples does Ava have now?",
    "After buying: 3 + 4 = 7. After giving away: 7 - 2 = 5. The answer is \\boxed{5}.",
    "Ben buys 6 boxes with 7 pens in each box and then loses 5 pens.",
    "In the boxes: 6 * 7 = 42. After losing some: 42 - 5 = 37. The answer is \\boxed{37}.",
]
SYSTEM = TEXTS[0]

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


@pytest.fixture(scope="module")
def chatml():
    return build_tokenizer(TEXTS, vocab_size=400)


@pytest.fixture
def fresh():
    """A tokenizer a test may modify (template, special tokens)."""
    return build_tokenizer(TEXTS, vocab_size=400)


def labelled_runs(tokenizer, ids: list[int], labels: list[int]) -> list[str]:
    """Decoded maximal runs of consecutive labelled tokens."""
    runs, current = [], []
    for token_id, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == token_id  # labels copy the input on assistant tokens
            current.append(token_id)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


def three_turns(answer: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM},
            {"role": "user", "content": TEXTS[1]},
            {"role": "assistant", "content": answer}]


# ------------------------------------------------------------------ ChatML (the tiny model's template)


def test_labels_cover_exactly_the_assistant_content_and_end_of_turn(chatml):
    answer = TEXTS[2]
    ids, labels = tokenize_conversation(chatml, three_turns(answer))
    assert len(ids) == len(labels)
    assert labelled_runs(chatml, ids, labels) == [answer + "<|im_end|>"]
    # the ids are the whole rendered conversation, nothing added or lost
    rendered = chatml.apply_chat_template(three_turns(answer), tokenize=False)
    assert chatml.decode(ids) == rendered
    assert ids == chatml(rendered, add_special_tokens=False)["input_ids"]
    # the newline after <|im_end|> is template whitespace, not something the model should learn
    end = chatml.convert_tokens_to_ids("<|im_end|>")
    last_end = len(ids) - 1 - ids[::-1].index(end)
    assert labels[last_end] == end
    assert all(label == IGNORE_INDEX for label in labels[last_end + 1:])
    # the generation prompt "<|im_start|>assistant\n" is not labelled
    start = chatml.convert_tokens_to_ids("<|im_start|>")
    last_start = len(ids) - 1 - ids[::-1].index(start)
    assert labels[last_start] == IGNORE_INDEX
    first_labelled = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert chatml.decode(ids[last_start:first_labelled]) == "<|im_start|>assistant\n"


def test_the_labelled_token_count_matches_the_answer_alone(chatml):
    # independent count: the answer and <|im_end|> tokenized on their own (the template puts a
    # newline before the content, which the byte-level pre-tokenizer keeps separate)
    answer = TEXTS[4]
    ids, labels = tokenize_conversation(chatml, three_turns(answer))
    expected = chatml(answer + "<|im_end|>", add_special_tokens=False)["input_ids"]
    assert [label for label in labels if label != IGNORE_INDEX] == expected


def test_assistant_spans_are_character_spans_of_the_rendered_text(chatml):
    text, spans = assistant_spans(chatml, three_turns("x = 1"))
    assert [text[lo:hi] for lo, hi in spans] == ["x = 1<|im_end|>"]
    assert text.endswith("x = 1<|im_end|>\n")


def test_multi_turn_labels_both_assistant_turns_and_not_the_user_between(chatml):
    first, second = "3 + 4 = 7.", "The answer is \\boxed{5}."
    follow_up = "And after giving 2 away?"
    messages = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": "Ava has 3 apples and buys 4 more."},
                {"role": "assistant", "content": first},
                {"role": "user", "content": follow_up},
                {"role": "assistant", "content": second}]
    ids, labels = tokenize_conversation(chatml, messages)
    assert labelled_runs(chatml, ids, labels) == [first + "<|im_end|>", second + "<|im_end|>"]
    unlabelled = chatml.decode([i for i, label in zip(ids, labels) if label == IGNORE_INDEX])
    assert follow_up in unlabelled and SYSTEM in unlabelled
    assert first not in unlabelled and second not in unlabelled


def test_a_conversation_without_an_assistant_turn_is_refused(chatml):
    with pytest.raises(ValueError, match="no assistant turn"):
        tokenize_conversation(chatml, three_turns("unused")[:2])


@pytest.mark.parametrize(
    "template",
    [
        # a running message count: the prefix rendered alone differs from the full conversation
        "{% for m in messages %}<|im_start|>{{ m['role'] }} {{ loop.index }}/{{ messages|length }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
        # a footer after the last message
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}<|endoftext|>",
    ],
    ids=["message-count", "footer"],
)
def test_a_template_with_inconsistent_prefixes_is_refused(fresh, template):
    fresh.chat_template = template
    with pytest.raises(ValueError, match="prefixes consistently"):
        tokenize_conversation(fresh, three_turns(TEXTS[2]))


def test_a_consistent_custom_template_is_accepted(fresh):
    # the counterpart of the above: a template change alone does not trip the check
    fresh.chat_template = (
        "{% for m in messages %}<<{{ m['role'] }}>>\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<<assistant>>\n{% endif %}"
    )
    ids, labels = tokenize_conversation(fresh, three_turns(TEXTS[2]))
    assert labelled_runs(fresh, ids, labels) == [TEXTS[2] + "<|im_end|>"]


def test_a_prompt_ending_in_a_space_still_labels_the_first_content_word(fresh):
    # "Assistant: After" pre-tokenizes as "Assistant", ":", " After": the first content token
    # starts on the prompt's space; dropping it would silently never train the first word
    fresh.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    ids, labels = tokenize_conversation(fresh, three_turns(TEXTS[2]))
    assert labelled_runs(fresh, ids, labels) == [" " + TEXTS[2] + "<|im_end|>"]


# ------------------------------------------------------------------ a Llama-3 template writing BOS itself


@pytest.fixture
def llama3(fresh):
    from tokenizers.processors import TemplateProcessing

    fresh.add_special_tokens({"bos_token": "<|begin_of_text|>",
                              "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    bos = fresh.bos_token_id
    # like Llama 3's tokenizer: plain encoding prepends BOS, so a careless encode would double it
    fresh.backend_tokenizer.post_processor = TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B", special_tokens=[("<|begin_of_text|>", bos)])
    fresh.chat_template = LLAMA3_TEMPLATE
    assert fresh("hi")["input_ids"][0] == bos  # the precondition that makes the test bite
    return fresh


def test_llama3_template_gives_one_bos_and_labels_content_and_eot(llama3):
    answer = TEXTS[4]
    ids, labels = tokenize_conversation(llama3, three_turns(answer))
    bos = llama3.bos_token_id
    assert ids[0] == bos
    assert ids.count(bos) == 1
    assert labels[0] == IGNORE_INDEX
    assert labelled_runs(llama3, ids, labels) == [answer + "<|eot_id|>"]
    eot = llama3.convert_tokens_to_ids("<|eot_id|>")
    assert ids[-1] == eot and labels[-1] == eot
    # the assistant header is the prompt, not the target
    prompt = llama3.decode([i for i, label in zip(ids, labels) if label == IGNORE_INDEX])
    assert prompt.endswith(TEXTS[1] + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n")


def test_a_tokenizer_loaded_offline_saves_what_one_loaded_online_does(tiny_model, tmp_path, monkeypatch):
    """Offline mode makes transformers record local_files_only=True in tokenizer_config.json
    (tokenization_utils_base.py:1587-1589, 1844); a model folder must not depend on it."""
    import transformers.tokenization_utils_base as base

    from sedsft.chat import load_tokenizer

    saved = {}
    for offline in (False, True):
        monkeypatch.setattr(base, "is_offline_mode", lambda offline=offline: offline)
        load_tokenizer(tiny_model).save_pretrained(tmp_path / str(offline))
        saved[offline] = (tmp_path / str(offline) / "tokenizer_config.json").read_bytes()
    assert saved[True] == saved[False] and b"local_files_only" not in saved[True]


def test_every_prompt_is_built_by_prompt_messages():
    """SFT, RL, diversity, evaluation and tiny pretraining prompts share one builder (a mismatch
    between them costs accuracy): no other module writes a system or user turn."""
    from pathlib import Path

    import sedsft

    assert prompt_messages("S", "P") == [{"role": "system", "content": "S"}, {"role": "user", "content": "P"}]
    src = Path(sedsft.__file__).parent
    writers = sorted(p.name for p in src.glob("*.py") if '"role": "user"' in p.read_text())
    assert writers == ["chat.py"]
