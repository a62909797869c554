"""One SFT training step of a real model: our SED (fused) against the HF Trainer's default CE path.

    snakemake --cores all results/smollm2/sft/threshold.json   # the model, its SFT data and tau
    python perf/sft_step.py --experiment smollm2 --json sft_step.json --csv sft_step.csv
    python perf/sft_step.py --experiment smollm2 --zero3       # 2 gloo ranks under DeepSpeed ZeRO-3

Every method trains the experiment's base model on the experiment's own SFT batches (its
`sft_train.parquet`, in the Trainer's seeded order), with its per_device_batch_size, learning rate
and AdamW, gradient checkpointing off, one micro-batch per optimizer step:
    trainer_ce        transformers.Trainer with its own loss: the model's forward with labels, full
                      logits upcast to fp32 and cross-entropy (what TRL's SFTTrainer computes too)
    sed_fused         sedsft's SFT trainer, loss sed (tau from the experiment's threshold.json),
                      loss_impl fused: what the `sft` stage runs by default
    ce_fused          the same trainer, loss ce, fused
    sed_checkpointed  loss sed, loss_impl checkpointed (the LM-head module, one checkpoint per chunk)
Each method runs in a fresh process (with --zero3: a fresh torchrun of 2 ranks), so its peak RSS
is its own: --warmup steps, then --steps timed ones. A step is the Trainer's optimizer step
(forward, backward, clipping, AdamW), timed by a TrainerCallback. Reported: the median step time,
label tokens/s over the timed steps (with --zero3 summed over the ranks), peak RSS (ru_maxrss;
with --zero3 the largest rank's), and each as a ratio to the first method listed. --repeats R runs
R rounds of all the methods in turn and reports the medians over rounds, each ratio the median of
the ratios within a round (the machine's speed drifts between runs; a round's methods share it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
try:
    import sedsft  # noqa: F401
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from loss import write_rows  # noqa: E402  perf/loss.py: the rows as JSON (with the settings) and CSV

METHODS = {  # name -> (trainer, loss, loss_impl)
    "trainer_ce": ("hf", "ce", None),
    "sed_fused": ("sedsft", "sed", "fused"),
    "ce_fused": ("sedsft", "ce", "fused"),
    "sed_checkpointed": ("sedsft", "sed", "checkpointed"),
}
DEFAULT_METHODS = "trainer_ce,sed_fused,ce_fused,sed_checkpointed"
ZERO3_METHODS = "sed_checkpointed,sed_fused"


def inputs(experiment: str, config: str, workdir: str) -> dict:
    """The experiment's base model, SFT data, tau and sft settings (paths under workdir, the
    folder holding results/), refused in one line if the workflow has not built them yet."""
    from sedsft import artifacts
    from sedsft.config import load_experiment

    exp = load_experiment(config, experiment)
    root = Path(workdir)
    built = {"train": root / artifacts.sft_data("train", experiment),
             "threshold": root / artifacts.threshold(experiment)}
    if exp.model.built_locally:  # else a Hub id or a local folder (model.path)
        built["model"] = root / artifacts.model("base", experiment)
    missing = [str(path) for path in built.values() if not path.exists()]
    if missing:
        sys.exit(f"perf/sft_step.py: {', '.join(missing)} missing; build them first: "
                 f"snakemake --cores all {artifacts.threshold(experiment)}")
    return {"model": str(built.get("model", exp.model.path)), "train": str(built["train"]),
            "threshold": str(built["threshold"]), "sft": exp.sft, "seed": exp.seed}


def step_timer(times: list[float]):
    """A TrainerCallback appending each optimizer step's seconds to `times` (transformers is
    imported in the child only)."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.started)

    return StepTimer()


def child(args) -> dict:
    """Train one method for warmup + steps optimizer steps; this process's measurements."""
    import torch
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from sedsft.chat import load_tokenizer
    from sedsft.hardware import start_deepspeed_on_cpu
    from sedsft.launch import deepspeed_config
    from sedsft.sft import load_sequences, loss_settings, make_trainer_class, pad_collator

    kind, loss, impl = METHODS[args.methods]
    given = inputs(args.experiment, args.config, args.workdir)
    cfg = dataclasses.replace(given["sft"], loss=loss,
                              per_device_batch_size=args.batch_size or given["sft"].per_device_batch_size)
    tau = json.loads(Path(given["threshold"]).read_text())["tau"] if loss == "sed" else None
    deepspeed = "zero3" if args.zero3 else None
    start_deepspeed_on_cpu(deepspeed)
    work = Path(args.work_dir) / args.methods
    targs = TrainingArguments(
        output_dir=str(work), deepspeed=deepspeed_config(deepspeed),
        per_device_train_batch_size=cfg.per_device_batch_size, gradient_accumulation_steps=1,
        learning_rate=cfg.learning_rate, max_steps=args.warmup + args.steps,
        gradient_checkpointing=False, max_grad_norm=cfg.max_grad_norm, logging_steps=10 ** 6, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=not torch.cuda.is_available(), seed=given["seed"],
        data_seed=given["seed"], remove_unused_columns=False)
    model = AutoModelForCausalLM.from_pretrained(given["model"], dtype=torch.float32)
    tokenizer = load_tokenizer(given["model"], False)
    sequences = load_sequences(given["train"])
    collate, label_tokens = pad_collator(tokenizer.pad_token_id), []

    def counting_collate(batch):  # the label tokens of each batch, in the order the Trainer draws them
        out = collate(batch)
        label_tokens.append(int((out["labels"] != -100).sum()))
        return out

    common = {"model": model, "args": targs, "train_dataset": sequences, "data_collator": counting_collate}
    if kind == "hf":
        trainer = Trainer(**common)
    else:
        trainer = make_trainer_class()(**common, loss_settings=loss_settings(cfg, tau), loss_impl=impl,
                                       chunk_size=cfg.loss_chunk_size)
    times: list[float] = []
    trainer.add_callback(step_timer(times))
    trainer.train()
    timed, tokens = times[args.warmup:], label_tokens[args.warmup:len(times)]
    return {"name": args.methods, "step_s": statistics.median(timed), "steps": len(timed),
            "label_tokens_per_s": sum(tokens) / sum(timed),
            "final_loss": next((r["train_loss"] for r in trainer.state.log_history if "train_loss" in r), None),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # KiB on Linux
            "rank": int(os.environ.get("RANK", "0"))}


def run_method(name: str, args) -> dict:
    """One method in a fresh process (or torchrun), its rows merged over ranks."""
    own = [sys.executable, str(Path(__file__).resolve()), "--child", "--methods", name, "--experiment",
           args.experiment, "--config", str(args.config), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--batch-size", str(args.batch_size or 0), "--workdir", args.workdir, "--work-dir", args.work_dir,
           *(["--zero3"] if args.zero3 else [])]
    command = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                *own[1:]] if args.zero3 else own)
    env = {**os.environ, "OMP_NUM_THREADS": str(1 if args.zero3 else os.cpu_count())}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
    if done.returncode:
        sys.exit(f"perf/sft_step.py: {name} failed (rc {done.returncode}):\n{done.stderr[-4000:]}")
    rows = [json.loads(line[len("ROW "):]) for line in done.stdout.splitlines() if line.startswith("ROW ")]
    first = next(r for r in rows if r["rank"] == 0)
    # the ranks train on batches of their own at once: their label tokens add up
    return {**{k: v for k, v in first.items() if k != "rank"}, "peak_rss": max(r["peak_rss"] for r in rows),
            "label_tokens_per_s": sum(r["label_tokens_per_s"] for r in rows), "ranks": len(rows)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--experiment", default="smollm2", help="whose base model, SFT data, tau and sft settings")
    p.add_argument("--config", default=str(REPO / "config.yaml"))
    p.add_argument("--workdir", default=str(REPO), help="the folder holding results/ (snakemake's -d)")
    p.add_argument("--methods", help=f"comma-separated, of {', '.join(METHODS)} (default: {DEFAULT_METHODS}; "
                                     f"with --zero3: {ZERO3_METHODS})")
    p.add_argument("--batch-size", type=int, default=0, help="sequences per step (default: the experiment's "
                                                               "sft.per_device_batch_size)")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per method")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocator, lazy initialisation)")
    p.add_argument("--repeats", type=int, default=1, help="rounds of all methods; ratios: the median over rounds")
    p.add_argument("--zero3", action="store_true", help="2 CPU ranks (gloo) under DeepSpeed ZeRO-3")
    p.add_argument("--work-dir", default="/tmp/sedsft_perf_sft_step", help="the Trainers' scratch output_dir")
    p.add_argument("--json", metavar="FILE", help="also write the rows (and the settings) as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the rows as CSV")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.methods = args.methods or (ZERO3_METHODS if args.zero3 else DEFAULT_METHODS)
    args.config, args.workdir = str(Path(args.config).resolve()), str(Path(args.workdir).resolve())
    if args.child:
        print("ROW " + json.dumps(child(args)), flush=True)
        return None
    names = args.methods.split(",")
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        sys.exit(f"--methods: unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    given = inputs(args.experiment, args.config, args.workdir)
    print(f"{args.experiment}: {given['model']}, batch {args.batch_size or given['sft'].per_device_batch_size}, "
          f"{'ZeRO-3 on 2 gloo ranks' if args.zero3 else f'1 process, {os.cpu_count()} threads'}, "
          f"median of {args.steps} steps after {args.warmup}, {args.repeats} round(s) of the methods")
    # rounds of every method in turn: a machine that drifts (by a third here between runs) shifts
    # a round's methods together, so each ratio is taken within its round, then the median over rounds
    rounds = [[run_method(name, args) for name in names] for _ in range(args.repeats)]
    rows = []
    for i, name in enumerate(names):
        runs = [r[i] for r in rounds]
        row = {**runs[0], **{k: statistics.median(run[k] for run in runs)
                             for k in ("step_s", "label_tokens_per_s", "peak_rss")}, "rounds": len(runs)}
        for ratio, key in (("x_step_time", "step_s"), ("x_tokens_per_s", "label_tokens_per_s"),
                           ("x_peak_rss", "peak_rss")):
            per_round = [run[key] / r[0][key] for run, r in zip(runs, rounds)]
            row[ratio] = statistics.median(per_round)
            row[ratio + "_per_round"] = per_round
        rows.append(row)
    header = f"{'method':<18}{'step s':>9}{'tok/s':>9}{'x tok/s':>9}{'peak RSS':>11}{'x RSS':>8}{'loss':>9}"
    print(header + "\n" + "-" * len(header))
    for r in rows:
        print(f"{r['name']:<18}{r['step_s']:>9.2f}{r['label_tokens_per_s']:>9.0f}{r['x_tokens_per_s']:>9.2f}"
              f"{r['peak_rss'] / 2 ** 30:>9.2f} G{r['x_peak_rss']:>8.2f}{r['final_loss'] or float('nan'):>9.4f}")
    write_rows(rows, args)
    return rows


if __name__ == "__main__":
    main()
