"""The `tiny` base model: a byte-level BPE tokenizer and a small Llama, built and pre-trained
locally, saved as an ordinary HF folder so every later stage loads it exactly as it would load
a Hub model. Pre-training gives the base a real, peaked next-token distribution, which tau
calibration needs (an untrained model's distribution is flat everywhere).
"""

from __future__ import annotations

import json
from pathlib import Path

from sedsft.chat import prompt_messages
from sedsft.config import ConfigError, GGUFConfig, TinyModelConfig, section
from sedsft.tracking import trainer_reporting, tracker_arguments, watch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# ChatML, the template of Qwen2.5 and SmolLM2: each turn is <|im_start|>role\n...<|im_end|>\n
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        # every byte is in the alphabet, so benchmark text outside the tiny task still encodes
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
    )


def build_model(tokenizer, cfg: TinyModelConfig, seed: int):
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False)
    return model


def conversation(system_prompt: str, question: str, answer: str | None = None) -> list[dict]:
    messages = prompt_messages(system_prompt, question)
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def pretrain(model, tokenizer, texts: list[str], cfg: TinyModelConfig, seed: int, work_dir: Path,
             tracker: str = "tensorboard") -> list[dict]:
    """Causal-LM training on whole chat-formatted texts; returns the Trainer's log history."""
    import torch
    from transformers import Trainer, TrainingArguments

    encoded = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]

    def collate(batch):
        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention[row, : len(ids)] = 1
        labels = input_ids.masked_fill(attention == 0, -100)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    args = TrainingArguments(
        output_dir=str(work_dir),
        max_steps=cfg.pretrain_steps,
        per_device_train_batch_size=cfg.pretrain_batch_size,
        learning_rate=cfg.pretrain_learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,
        logging_steps=max(1, cfg.pretrain_steps // 10),
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        seed=seed,
        remove_unused_columns=False,
        **trainer_reporting(tracker, work_dir),
    )
    trainer = Trainer(model=model, args=args, train_dataset=encoded, data_collator=collate)
    watch(trainer)
    if cfg.pretrain_steps > 0:
        trainer.train()
    return trainer.state.log_history


def build_and_pretrain(task_dir: str | Path, out_dir: str | Path, cfg: TinyModelConfig, seed: int,
                       system_prompt: str, tracker: str = "tensorboard") -> dict:
    """Tokenizer from the task's text, Llama from config, brief pre-training, save_pretrained."""
    task_dir, out_dir = Path(task_dir), Path(out_dir)
    rows = [json.loads(line) for line in open(task_dir / "pretrain.jsonl")]
    corpus_rows = rows + [json.loads(line) for line in open(task_dir / "sft.jsonl")]
    # the system prompt is part of every training text, so the tokenizer learns it too
    tokenizer = build_tokenizer([system_prompt] + [r["question"] + " " + r["answer"] for r in corpus_rows],
                                cfg.vocab_size)
    texts = [tokenizer.apply_chat_template(conversation(system_prompt, r["question"], r["answer"]), tokenize=False)
             for r in rows]
    model = build_model(tokenizer, cfg, seed)
    history = pretrain(model, tokenizer, texts, cfg, seed, out_dir.parent / "pretrain_checkpoints", tracker)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    losses = [h["loss"] for h in history if "loss" in h]
    return {"parameters": sum(p.numel() for p in model.parameters()), "vocab_size": len(tokenizer),
            "pretrain_steps": cfg.pretrain_steps, "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None, "log_history": history}


# ----------------------------------------------------------------------------- the base_model stage
# (a GGUF base model is converted in gguf_model instead)


def base_model_arguments(parser) -> None:
    parser.add_argument("--task-dir", help="the tiny task's folder (pretrain.jsonl, sft.jsonl; written by "
                                           "tiny_task); a tiny model needs it, a GGUF one does not")
    parser.add_argument("--out-dir", required=True, help="model folder this stage writes (save_pretrained)")
    tracker_arguments(parser)


def run_base_model(args, settings: dict) -> dict:
    if settings["model"]["gguf"] is not None:
        from sedsft.gguf_model import convert

        return convert(section(settings, GGUFConfig, "model.gguf"), args.out_dir,
                       settings["model"]["trust_remote_code"])
    if not args.task_dir:
        raise ConfigError("base-model: a tiny model needs --task-dir (the tiny task's files)")
    tiny = section(settings, TinyModelConfig, "model.tiny")
    return build_and_pretrain(args.task_dir, args.out_dir, tiny, settings["data_seed"], settings["system_prompt"],
                              args.tracker)
