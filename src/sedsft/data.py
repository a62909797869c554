"""Data-prep stages: SFT token files, RL prompts, normalized benchmarks."""

from __future__ import annotations

import json
import re


from sedsft.chat import IGNORE_INDEX, load_tokenizer, prompt_messages, tokenize_conversation
from sedsft.config import ModelConfig, RLDataConfig, SFTDataConfig, section
from sedsft.sources import DataError, get_field, load_rows
from sedsft.tracking import progress_over

CALCULATOR_NOTE = re.compile(r"<<[^<>]*>>")  # GSM8K's "<<48/2=24>>" annotations


def gsm8k_solution(text: str) -> str:
    """A GSM8K worked solution in the form the system prompt asks for: the calculator notes
    removed and the final '#### N' line turned into a boxed answer."""
    from sedsft.benchmarks import gsm8k_final

    final = gsm8k_final(text)  # raises without the '#### ' marker
    body = CALCULATOR_NOTE.sub("", text.rsplit("#### ", 1)[0]).rstrip()
    return f"{body}\nThe final answer is $\\boxed{{{final}}}$."


def formatted_answer(value, answer_format: str, gold: bool) -> str:
    """The answer column as configured: `text` as is; `gsm8k` as a boxed solution (SFT) or the
    final number (RL gold)."""
    if answer_format == "text":
        return str(value)
    from sedsft.benchmarks import gsm8k_final

    return gsm8k_final(value) if gold else gsm8k_solution(str(value))


def _answer(row: dict, field: str, answer_format: str, gold: bool, source: str, index: int) -> str:
    value = get_field(row, field, source, index)
    try:
        return formatted_answer(value, answer_format, gold)
    except ValueError as error:
        raise DataError(f"{source}: row {index}, field {field!r} (answer_format {answer_format}): {error}") from None


def conversation_of(row: dict, cfg: SFTDataConfig, system_prompt: str, source: str, index: int) -> list[dict]:
    if cfg.messages_field:
        messages = list(get_field(row, cfg.messages_field, source, index))
        if messages and messages[0].get("role") != "system":
            messages.insert(0, {"role": "system", "content": system_prompt})
    else:
        messages = [
            *prompt_messages(system_prompt, str(get_field(row, cfg.question_field, source, index))),
            {"role": "assistant", "content": _answer(row, cfg.answer_field, cfg.answer_format, False, source, index)},
        ]
    return messages


def prepare_sft(source: str, cfg: SFTDataConfig, model: ModelConfig, tokenizer_path: str,
                system_prompt: str, train_out: str, val_out: str) -> dict:
    """Tokenize the first train_rows rows (train) and the next val_rows rows (validation)."""
    import pandas as pd

    tokenizer = load_tokenizer(tokenizer_path, model.trust_remote_code)
    rows = load_rows(source, cfg.split, cfg.train_rows + cfg.val_rows)
    if len(rows) <= cfg.train_rows:
        raise DataError(f"{source}: {len(rows)} rows, but train_rows={cfg.train_rows} leaves none for "
                        f"validation (val_rows={cfg.val_rows})")
    splits = {"train": rows[: cfg.train_rows], "val": rows[cfg.train_rows:]}
    stats = {"source": source, "max_length": cfg.max_length}
    for split, split_rows in splits.items():
        offset = 0 if split == "train" else cfg.train_rows
        records, too_long = [], 0
        for i, row in enumerate(progress_over(split_rows, f"tokenize {split}", "row")):
            index = offset + i
            messages = conversation_of(row, cfg, system_prompt, source, index)
            try:
                input_ids, labels = tokenize_conversation(tokenizer, messages)
            except ValueError as error:
                raise DataError(f"{source}: row {index}: {error}") from None
            if len(input_ids) > cfg.max_length:
                too_long += 1  # dropped, not truncated: a cut-off solution teaches a missing answer
                continue
            records.append({"row": index, "input_ids": input_ids, "labels": labels,
                            "num_label_tokens": sum(label != IGNORE_INDEX for label in labels)})
        if not records:
            raise DataError(f"{source}: no {split} sequence fits max_length={cfg.max_length}")
        out = train_out if split == "train" else val_out
        pd.DataFrame(records).to_parquet(out, index=False)
        stats[split] = {"rows": len(split_rows), "kept": len(records), "dropped_too_long": too_long,
                        "label_tokens": int(sum(r["num_label_tokens"] for r in records)),
                        "tokens": int(sum(len(r["input_ids"]) for r in records))}
    return stats


def prepare_rl_prompts(source: str, cfg: RLDataConfig, system_prompt: str, out: str) -> dict:
    """Conversational prompts (system + user) with gold answers, in TRL's prompt format."""
    import pandas as pd

    rows = load_rows(source, cfg.split, cfg.max_prompts, skip=cfg.skip_rows)
    records = []
    for index, row in enumerate(rows, start=cfg.skip_rows):
        question = str(get_field(row, cfg.question_field, source, index)).strip()
        answer = _answer(row, cfg.answer_field, cfg.answer_format, True, source, index).strip()
        if not question or not answer:
            raise DataError(f"{source}: row {index} has an empty {'question' if not question else 'answer'}")
        records.append({
            "id": str(row.get("id", index)),
            "prompt": prompt_messages(system_prompt, question),
            "answer": answer,
        })
    pd.DataFrame(records).to_parquet(out, index=False)
    return {"source": source, "skipped_rows": cfg.skip_rows, "prompts": len(records)}


def prepare_benchmark(name: str, source: str, limit: int | None, out: str, tiny_test: str | None = None) -> dict:
    """One benchmark as {id, problem, answer} rows; skipped rows are reported, never scored."""
    import pandas as pd

    from sedsft.benchmarks import load_benchmark

    if name == "tiny":
        rows = [json.loads(line) for line in open(tiny_test)]
        skipped = []
    else:
        rows, skipped = load_benchmark(name, source, limit)
    if not rows:
        raise DataError(f"benchmark {name}: no usable rows in {source}")
    pd.DataFrame(rows, columns=["id", "problem", "answer"]).to_parquet(out, index=False)
    return {"benchmark": name, "source": tiny_test or source, "problems": len(rows), "skipped": skipped}


# ----------------------------------------------------------------------------- the data stages


def sft_data_arguments(parser) -> None:
    parser.add_argument("--source", required=True,
                        help="data.sft.source: a Hub dataset id, a local JSONL/Parquet file, or the tiny task's "
                             "sft.jsonl (written by tiny_task)")
    parser.add_argument("--tokenizer", required=True,
                        help="the base model (folder written by base_model, or a Hub id): its tokenizer and "
                             "chat template")
    parser.add_argument("--train-out", required=True, help="sft_train.parquet this stage writes (token ids, labels)")
    parser.add_argument("--val-out", required=True,
                        help="sft_val.parquet this stage writes (threshold calibrates on it)")


def run_sft_data(args, settings: dict) -> dict:
    return prepare_sft(args.source, section(settings, SFTDataConfig, "data.sft"),
                       section(settings, ModelConfig, "model"), args.tokenizer, settings["system_prompt"],
                       args.train_out, args.val_out)


def rl_prompts_arguments(parser) -> None:
    parser.add_argument("--source", required=True,
                        help="data.rl.source: a Hub dataset id, a local JSONL/Parquet file, or the tiny task's "
                             "rl.jsonl (written by tiny_task)")
    parser.add_argument("--out", required=True, help="rl_prompts.parquet this stage writes (prompt, gold answer)")


def run_rl_prompts(args, settings: dict) -> dict:
    return prepare_rl_prompts(args.source, section(settings, RLDataConfig, "data.rl"), settings["system_prompt"],
                              args.out)


def benchmark_data_arguments(parser) -> None:
    parser.add_argument("--name", required=True, help="the benchmark (sedsft.benchmarks.BENCHMARKS, or tiny)")
    parser.add_argument("--out", required=True, help="<bench>.parquet this stage writes (id, problem, answer)")
    parser.add_argument("--tiny-test", help="the tiny task's test.jsonl (written by tiny_task): the problems of "
                                            "the tiny benchmark")


def run_benchmark_data(args, settings: dict) -> dict:
    return prepare_benchmark(args.name, settings["benchmarks_dir"], settings["eval"]["limit"], args.out, args.tiny_test)
