"""Where the workflow's artifacts live, and how they are written.

Every path of results/ is built here: the rules' inputs, outputs, logs and timings, their helpers
(workflow/rules/common.smk), compare.py and scripts/gpu_check_summary.py all ask this module, so
that renaming an artifact is one edit. A path function's arguments default to the rules'
wildcards ("{exp}", "{stage}", "{bench}", "{name}"): called bare it gives a rule's template,
called with values a concrete path, and a template may be filled later with str.format.

The writers write beside the target and rename it into place, so that a killed job never leaves
a half-written file that looks finished (Snakemake would take it as done).

The standard library only: the Snakefile imports this at DAG-load time, and the GPU check's
summary on machines whose stack may be broken.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

RESULTS = "results"
EXP, STAGE, BENCH, NAME = "{exp}", "{stage}", "{bench}", "{name}"


# ----------------------------------------------------------------------------- an experiment's folder


def experiment_dir(exp: str = EXP) -> str:
    return f"{RESULTS}/{exp}"


def relative(path: str) -> str:
    """A template's path inside its experiment's folder (`sft/train.json`): what compare.py and
    the GPU check join to a folder they are given."""
    prefix = experiment_dir() + "/"
    if not path.startswith(prefix):
        raise ValueError(f"{path!r} is not an experiment's artifact template")
    return path[len(prefix):]


def job_log(job: str, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/logs/{job}.log"


def job_timing(job: str, exp: str = EXP) -> str:
    """The rule's `benchmark:` file (wall time, max RSS) of one job."""
    return f"{experiment_dir(exp)}/timings/{job}.tsv"


# ----------------------------------------------------------------------------- data


def tiny_task_file(split: str, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/data/tiny/{split}.jsonl"


def tiny_task_summary(exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/data/tiny/summary.json"


def base_model_summary(exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/base/summary.json"


def sft_data(split: str, exp: str = EXP) -> str:
    """split: train or val."""
    return f"{experiment_dir(exp)}/data/sft_{split}.parquet"


def sft_data_summary(exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/data/sft_data.json"


def rl_prompts(exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/data/rl_prompts.parquet"


def rl_prompts_summary(exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/data/rl_prompts.json"


def bench_problems(bench: str = BENCH, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/data/bench/{bench}.parquet"


def bench_summary(bench: str = BENCH, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/data/bench/{bench}.json"


# ----------------------------------------------------------------------------- training


def model(stage: str = STAGE, exp: str = EXP) -> str:
    """The model folder a stage wrote: base (the one the workflow built), sft or rl."""
    return f"{experiment_dir(exp)}/{stage}/model"


def threshold(exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/sft/threshold.json"


def train_summary(stage: str = STAGE, exp: str = EXP) -> str:
    """sft or rl: the trainer's summary and log history."""
    return f"{experiment_dir(exp)}/{stage}/train.json"


def sft_metrics(exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/sft/metrics.jsonl"


# ----------------------------------------------------------------------------- diversity


def diversity_summary(stage: str = STAGE, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/{stage}/diversity.json"


def diversity_samples(stage: str = STAGE, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/{stage}/diversity_samples.jsonl"


def diversity_per_prompt(stage: str = STAGE, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/{stage}/diversity_per_prompt.jsonl"


def diversity_plot(kind: str, stage: str = STAGE, exp: str = EXP) -> str:
    """kind: pass_at_k or metrics."""
    return f"{experiment_dir(exp)}/{stage}/diversity_{kind}.png"


# ----------------------------------------------------------------------------- evaluation


def generations(stage: str = STAGE, bench: str = BENCH, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/eval/{stage}/{bench}.jsonl"


def generation_summary(stage: str = STAGE, bench: str = BENCH, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/eval/{stage}/{bench}.generation.json"


def graded(stage: str = STAGE, bench: str = BENCH, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/eval/{stage}/{bench}.graded.jsonl"


def grading_summary(stage: str = STAGE, bench: str = BENCH, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/eval/{stage}/{bench}.grading.json"


def eval_result(stage: str = STAGE, exp: str = EXP) -> str:
    """The stage's headline: every benchmark's scores (results/{exp}/rl_eval.json)."""
    return f"{experiment_dir(exp)}/{stage}_eval.json"


def eval_table(stage: str = STAGE, exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/{stage}_eval.md"


# ----------------------------------------------------------------------------- over seeds
# An experiment under another seed N is the run results/{exp}.seed{N}/ (sedsft.config.seed_run).


def seeds_summary(exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/seeds.json"


def seeds_table(exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/seeds.md"


def seeds_plot(exp: str = EXP) -> str:
    return f"{experiment_dir(exp)}/seeds.png"


# ----------------------------------------------------------------------------- comparisons


def comparison_table(name: str = NAME) -> str:
    return f"{RESULTS}/compare/{name}.md"


def comparison_plot(kind: str, name: str = NAME) -> str:
    """kind: pass_at_k, diversity, training or seeds."""
    return f"{RESULTS}/compare/{name}_{kind}.png"


def comparison_summary(name: str = NAME) -> str:
    return f"{RESULTS}/compare/{name}.json"


# The SFT-diversity comparison over seeds lives in its own folder: results/compare/{name}.md's
# pattern would otherwise also match results/compare/{name}_diversity.md.
def diversity_comparison_table(name: str = NAME) -> str:
    return f"{RESULTS}/compare/sft_diversity/{name}.md"


def diversity_comparison_plot(name: str = NAME) -> str:
    return f"{RESULTS}/compare/sft_diversity/{name}.png"


def diversity_comparison_summary(name: str = NAME) -> str:
    return f"{RESULTS}/compare/sft_diversity/{name}.json"


def comparison_log(name: str = NAME, stage: str = "compare") -> str:
    return f"{RESULTS}/compare/logs/{stage}_{name}.log"


def comparison_timing(name: str = NAME, stage: str = "compare") -> str:
    return f"{RESULTS}/compare/timings/{stage}_{name}.tsv"


# ----------------------------------------------------------------------------- writing


def staging_path(path: str | Path) -> Path:
    """Where a file or folder is written before it is renamed to `path`: beside it, so the
    rename stays on one file system (and so is atomic)."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


def write_text(path: str | Path, text: str) -> None:
    """Write the text atomically (no fsync: a job's outputs need to survive a kill, not a crash
    of the machine)."""
    tmp = staging_path(path)
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: str | Path, payload) -> None:
    """Indented JSON and a newline, atomically; values JSON cannot hold are written as str()."""
    write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """One JSON object a line, atomically; rows may be a generator (streamed, never all in memory)."""
    tmp = staging_path(path)
    with open(tmp, "w") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    tmp.replace(path)


def replace_folder(staging: str | Path, target: str | Path) -> None:
    """Put a completely written folder in the place of `target` (removed first: a folder cannot
    be renamed over a non-empty one)."""
    shutil.rmtree(target, ignore_errors=True)
    Path(staging).rename(target)


# ----------------------------------------------------------------------------- forgiving readers
# For reports on runs that may have failed half-way: a missing or torn file is an absent value.


def read_json_or_none(path: str | Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_jsonl_lines_that_parse(path: str | Path) -> list:
    records = []
    try:
        with open(path) as fh:
            for line in fh:
                try:
                    records.append(json.loads(line))
                except ValueError:
                    continue
    except OSError:
        pass
    return records
