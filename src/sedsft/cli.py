"""`sedsft <stage>`: every workflow stage as a command, runnable by hand outside Snakemake.

Settings come either from the workflow (`--settings` JSON: the stage's slice of the resolved
experiment) or, by hand, from `--config config.yaml --experiment NAME`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from sedsft import config as C
from sedsft.benchmarks import BenchmarkError
from sedsft.hardware import HardwareError
from sedsft.launch import GPU_STAGES, pin_gpus
from sedsft.sources import DataError

log = logging.getLogger("sedsft")


def _settings(args) -> dict:
    if args.settings:
        return json.loads(args.settings)
    if not args.config:
        raise C.ConfigError("give --settings JSON or --config FILE with --experiment NAME")
    raw = C.load_config(args.config)
    if args.stage == "compare":  # --experiment names a comparison (config.yaml's `comparisons`)
        return C.comparison_settings(raw, args.experiment, Path(args.config).resolve().parent)
    settings = C.experiment_settings(raw, args.experiment, Path(args.config).resolve().parent)
    C.parse_experiment(settings, args.experiment)  # full check when run by hand
    return settings


def _write(path: str, payload: dict, args, settings: dict, started: float) -> None:
    from sedsft.data import write_json
    from sedsft.provenance import provenance

    extra = {}
    if getattr(args, "gpus", None) is not None:  # what the job was given and what this process saw
        seen = sys.modules["torch"].cuda.device_count() if "torch" in sys.modules else None
        extra["gpus"] = {"job": args.gpus, "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                         "seen_by_torch": seen}
    payload["provenance"] = provenance(args.experiment, settings, stage=args.stage,
                                       seconds=round(time.time() - started, 2), **extra)
    write_json(path, payload)


# ----------------------------------------------------------------------------- stages


def tiny_task(args, s):
    from sedsft.tinytask import generate

    tiny = C.section(s, C.TinyModelConfig, "model.tiny")
    counts = generate(args.out_dir, seed=s["seed"], pretrain_problems=tiny.pretrain_problems,
                      sft_problems=tiny.sft_problems, rl_problems=tiny.rl_problems,
                      test_problems=tiny.test_problems, max_operand=tiny.max_operand)
    return {"rows": counts}


def base_model(args, s):
    if s["model"]["gguf"] is not None:
        from sedsft.gguf_model import convert

        return convert(C.section(s, C.GGUFConfig, "model.gguf"), args.out_dir, s["model"]["trust_remote_code"])
    from sedsft.tinymodel import build_and_pretrain

    if not args.task_dir:
        raise C.ConfigError("base-model: a tiny model needs --task-dir (the tiny task's files)")
    tiny = C.section(s, C.TinyModelConfig, "model.tiny")
    return build_and_pretrain(args.task_dir, args.out_dir, tiny, s["seed"], s["system_prompt"])


def sft_data(args, s):
    from sedsft.data import prepare_sft

    return prepare_sft(args.source, C.section(s, C.SFTDataConfig, "data.sft"), C.section(s, C.ModelConfig, "model"),
                       args.tokenizer, s["system_prompt"], args.train_out, args.val_out)


def rl_prompts(args, s):
    from sedsft.data import prepare_rl_prompts

    return prepare_rl_prompts(args.source, C.section(s, C.RLDataConfig, "data.rl"), s["system_prompt"], args.out)


def benchmark(args, s):
    from sedsft.data import prepare_benchmark

    return prepare_benchmark(args.name, s["benchmarks_dir"], s["eval"]["limit"], args.out, args.tiny_test)


def threshold(args, s):
    import torch
    from transformers import AutoModelForCausalLM

    from sedsft.sft import load_sequences
    from sedsft.threshold import calibrate

    cfg = C.section(s, C.ThresholdConfig, "threshold")
    if cfg.tau is not None:
        return {"tau": cfg.tau, "mode": "fixed", "loss_top_k": s["sft"]["top_k"]}
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32,
                                                 trust_remote_code=s["model"]["trust_remote_code"])
    if torch.cuda.is_available():
        model.to("cuda")
    return calibrate(model, load_sequences(args.val), mode=cfg.mode, loss_top_k=s["sft"]["top_k"],
                     ratio=s["sft"]["ratio"], max_sequences=cfg.max_sequences)


def sft(args, s):
    from sedsft.loss_registry import loss_named
    from sedsft.sft import read_tau, train

    cfg = C.section(s, C.SFTConfig, "sft")
    tau = read_tau(args.threshold) if loss_named(cfg.loss).needs_tau else None
    return train(args.base, C.section(s, C.ModelConfig, "model"), cfg, s["seed"], args.train, tau,
                 args.out_dir, args.work_dir, metrics_file=args.metrics)


def diversity(args, s):
    from sedsft.diversity import load_embedder, measure, sampling_of, select_prompts
    from sedsft.generation import generate_to_file, read_generations
    from sedsft.plots import plot_metrics, plot_pass_at_k

    cfg = C.section(s, C.DiversityConfig, "diversity")
    prompts = select_prompts(cfg, s["seed"], s["system_prompt"], args.prompts, args.benchmarks)
    sampling = sampling_of(cfg, s["seed"])
    summary = generate_to_file(args.model, prompts, args.samples, sampling, batch_size=cfg.batch_size,
                               trust_remote_code=s["model"]["trust_remote_code"], entropies=True)
    result, per_prompt = measure(read_generations(args.samples), prompts, embed=load_embedder(cfg.embedding_model))
    result = {"model": args.model, **result, "sampling": vars(sampling),
              "prompts_per_source": {source: sum(p["source"] == source for p in prompts)
                                     for source in dict.fromkeys(p["source"] for p in prompts)},
              "embedding_model": cfg.embedding_model, "entropy_distribution": summary["entropies"],
              "generation": summary}
    if args.per_prompt:
        with open(args.per_prompt, "w") as fh:
            fh.writelines(json.dumps(p) + "\n" for p in per_prompt)
    label = args.label or args.model
    if args.pass_at_k_plot:
        plot_pass_at_k({label: result}, args.pass_at_k_plot, title=f"pass@k: {label}")
    if args.metrics_plot:
        plot_metrics({label: result}, args.metrics_plot, title=f"diversity: {label}")
    return result


def rl(args, s):
    from sedsft.rl import train

    return train(args.model, C.section(s, C.RLConfig, "rl"), s["seed"], args.prompts, args.out_dir,
                 args.work_dir, trust_remote_code=s["model"]["trust_remote_code"])


def generate(args, s):
    import pandas as pd

    from sedsft.generation import SamplingSettings, generate_to_file

    ev = s["eval"]
    sampling = SamplingSettings(n=ev["sampling"]["n"], temperature=ev["sampling"]["temperature"],
                                top_p=ev["sampling"]["top_p"], max_new_tokens=ev["max_new_tokens"], seed=s["seed"])
    problems = pd.read_parquet(args.benchmark).to_dict("records")
    prompts = [{"id": p["id"], "messages": [{"role": "system", "content": s["system_prompt"]},
                                            {"role": "user", "content": p["problem"]}]} for p in problems]
    return generate_to_file(args.model, prompts, args.out, sampling, backend=ev["backend"],
                            batch_size=ev["batch_size"], trust_remote_code=s["model"]["trust_remote_code"],
                            tensor_parallel_size=ev["tensor_parallel_size"])


def grade(args, s):
    from sedsft.evaluate import grade_file

    return grade_file(args.generations, args.benchmark, args.out, workers=s["eval"]["grading_workers"],
                      timeout_s=s["eval"]["grading_timeout_s"])


def report(args, s):
    from sedsft.evaluate import markdown_table, summarize

    def pairs(values):
        return dict(v.split("=", 1) for v in values)

    result = summarize(pairs(args.graded), pairs(args.generation_meta), pairs(args.bench_meta), args.model)
    if args.diversity:
        with open(args.diversity) as fh:
            diversity = json.load(fh)
        result["sft_diversity"] = {k: v for k, v in diversity.items() if k not in ("provenance", "generation")}
    baseline = None
    if args.baseline:
        with open(args.baseline) as fh:
            baseline = json.load(fh)
        result["sft_baseline"] = {"average": baseline["average"],
                                  "accuracy": {b: v["accuracy"] for b, v in baseline["benchmarks"].items()}}
    Path(args.out_md).write_text(f"# {args.experiment}: {args.label}\n\n" + markdown_table(result, args.label, baseline))
    return result


def compare(args, s):
    from sedsft.compare import compare as run_comparison

    return run_comparison(s["comparison"], s["experiments"], args.results, args.out_md,
                          pass_at_k_plot=args.pass_at_k_plot, diversity_plot=args.diversity_plot,
                          training_plot=args.training_plot, settings=s.get("settings"))


STAGES = {
    "tiny-task": (tiny_task, [("--out-dir", True)]),
    "base-model": (base_model, [("--task-dir", False), ("--out-dir", True)]),
    "sft-data": (sft_data, [("--source", True), ("--tokenizer", True), ("--train-out", True), ("--val-out", True)]),
    "rl-prompts": (rl_prompts, [("--source", True), ("--out", True)]),
    "benchmark": (benchmark, [("--name", True), ("--out", True), ("--tiny-test", False)]),
    "threshold": (threshold, [("--base", True), ("--val", True)]),
    "sft": (sft, [("--base", True), ("--train", True), ("--threshold", False), ("--out-dir", True),
                  ("--work-dir", True), ("--metrics", False)]),
    "diversity": (diversity, [("--model", True), ("--prompts", False), ("--samples", True), ("--per-prompt", False),
                              ("--pass-at-k-plot", False), ("--metrics-plot", False), ("--label", False)]),
    "rl": (rl, [("--model", True), ("--prompts", True), ("--out-dir", True), ("--work-dir", True)]),
    "generate": (generate, [("--model", True), ("--benchmark", True), ("--out", True)]),
    "grade": (grade, [("--generations", True), ("--benchmark", True), ("--out", True)]),
    "report": (report, [("--model", True), ("--label", True), ("--out-md", True), ("--diversity", False),
                        ("--baseline", False)]),
    # --experiment names the comparison; --results holds results/<experiment>/ of each one
    "compare": (compare, [("--results", True), ("--out-md", True), ("--pass-at-k-plot", False),
                          ("--diversity-plot", False), ("--training-plot", False)]),
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="sedsft", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="stage", required=True)
    for name, (_, options) in STAGES.items():
        sub = commands.add_parser(name)
        sub.add_argument("--experiment", required=True, help="experiment name (provenance; config lookup)")
        sub.add_argument("--settings", help="the stage's settings as JSON (what the workflow passes)")
        sub.add_argument("--config", help="config.yaml, when running by hand")
        sub.add_argument("--summary", required=True, help="JSON file: the stage's result and provenance")
        for flag, required in options:
            sub.add_argument(flag, required=required)
        if name in GPU_STAGES:
            sub.add_argument("--gpus", type=int, metavar="N",
                             help="GPUs the job was given (the workflow passes the count it asks the scheduler "
                                  "for, sedsft.launch.job_gpus): this process sees only those it uses (one; "
                                  "generate and torchrun ranks: N), none for N = 0")
        if name == "diversity":
            sub.add_argument("--benchmarks", nargs="*", default=[], metavar="PARQUET",
                             help="benchmark problem files (<bench>.parquet) for diversity.sources: benchmarks")
        if name == "report":
            for flag in ("--graded", "--generation-meta", "--bench-meta"):
                sub.add_argument(flag, nargs="+", required=True, metavar="BENCH=PATH")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "gpus", None) is not None:  # before anything can initialise CUDA
        pin_gpus(args.stage, args.gpus)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    started = time.time()
    try:
        settings = _settings(args)
        run, _ = STAGES[args.stage]
        result = run(args, settings)
    except (C.ConfigError, DataError, BenchmarkError, HardwareError, FileNotFoundError) as error:
        # one clear line, not a traceback from deep inside a library
        print(f"sedsft {args.stage}: error: {error}", file=sys.stderr)
        return 2
    from sedsft.hardware import rank

    if rank() == 0:  # under torchrun every rank runs the stage; one writes its summary
        _write(args.summary, result, args, settings, started)
    log.info("%s done in %.1f s -> %s", args.stage, time.time() - started, args.summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
