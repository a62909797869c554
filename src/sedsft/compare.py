"""Several experiments side by side (`results/compare/{name}.md` + PNG plots).

Reads each experiment's finished artifacts -- `sft_eval.json`, `rl_eval.json`,
`sft/diversity.json`, `sft/train.json`, `sft/metrics.jsonl`, `rl/train.json` -- and writes the
paper-style accuracy table (SFT and RL rows per experiment, the eight benchmarks and their mean,
plus any other evaluated benchmark such as the tiny task's own), rows of deltas (RL − SFT within
an experiment; the first listed experiment minus each other one), the SFT models' diversity,
training curves, and each experiment's provenance. Nothing is recomputed from samples: the
numbers are the ones in the artifacts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sedsft import artifacts
from sedsft.benchmarks import BENCHMARKS
from sedsft.config import settings_hash
from sedsft.sources import DataError

# artifact -> its path under results/{experiment}/
ARTIFACTS = {
    "sft_eval": artifacts.relative(artifacts.eval_result("sft")),
    "rl_eval": artifacts.relative(artifacts.eval_result("rl")),
    "diversity": artifacts.relative(artifacts.diversity_summary("sft")),
    "sft_train": artifacts.relative(artifacts.train_summary("sft")),
    "sft_metrics": artifacts.relative(artifacts.sft_metrics()),
    "rl_train": artifacts.relative(artifacts.train_summary("rl")),
}
STAGES = ("sft", "rl")

# (key in diversity.json, column header, format); pass@1 / pass@N are added from `pass_at_k`
DIVERSITY_COLUMNS = (
    ("distinct_1", "distinct-1", ".3f"),
    ("distinct_2", "distinct-2", ".3f"),
    ("distinct_3", "distinct-3", ".3f"),
    ("self_bleu", "Self-BLEU", ".2f"),
    ("100_minus_self_bleu", "100 − Self-BLEU", ".2f"),
    ("semantic_diversity", "semantic div.", ".3f"),
    ("distinct_answers", "distinct answers", ".2f"),
    ("mean_token_entropy", "token entropy (nats)", ".3f"),
    ("pass@1", "pass@1", ".3f"),
    ("pass@N", "pass@N", ".3f"),
)


# ----------------------------------------------------------------------------- reading


def artifact_paths(results_dir: str | Path, experiment: str) -> dict[str, Path]:
    return {key: Path(results_dir) / experiment / rel for key, rel in ARTIFACTS.items()}


def _read_jsonl(path: Path) -> list[dict]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def load_run(results_dir: str | Path, experiment: str) -> dict:
    """One experiment's artifacts; a missing one is a FileNotFoundError naming the experiment,
    the files and the target that builds them."""
    paths = artifact_paths(results_dir, experiment)
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"experiment {experiment!r} lacks {', '.join(missing)} (build them with "
                                f"`snakemake {artifacts.eval_result('rl', experiment)}`)")
    run = {}
    for key, path in paths.items():
        try:
            if path.suffix == ".jsonl":
                run[key] = _read_jsonl(path)
            else:
                with open(path) as fh:
                    run[key] = json.load(fh)
        except json.JSONDecodeError as error:
            raise DataError(f"experiment {experiment!r}: {path} is not valid JSON ({error})") from None
    return run


def sft_curve(run: dict) -> list[dict]:
    """SFT logging steps (loss, ce, mask_rate, ...): sft/metrics.jsonl, else the trainer's
    log_history; the final summary line (no `loss`) is dropped, a step logged twice (a resumed
    run appends) keeps its last line."""
    rows = run.get("sft_metrics") or run["sft_train"].get("log_history") or []
    by_step = {row["step"]: row for row in rows if "loss" in row and "step" in row}
    return [by_step[s] for s in sorted(by_step)]


def rl_curve(run: dict) -> list[dict]:
    """GRPO logging steps that carry a reward (rl/train.json log_history)."""
    rows = run["rl_train"].get("log_history") or []
    by_step = {row["step"]: row for row in rows if row.get("reward") is not None and "step" in row}
    return [by_step[s] for s in sorted(by_step)]


# ----------------------------------------------------------------------------- numbers


def _diff(a, b):
    return None if a is None or b is None else a - b


def columns(runs: dict[str, dict]) -> tuple[list[str], list[str]]:
    """(the eight benchmarks present in some result, in the paper's order; any other evaluated
    benchmark, e.g. the tiny task's held-out set, in order of appearance)."""
    present: dict[str, None] = {}
    for run in runs.values():
        for stage in STAGES:
            present.update(dict.fromkeys(run[f"{stage}_eval"]["benchmarks"]))
    return [b for b in BENCHMARKS if b in present], [b for b in present if b not in BENCHMARKS]


def accuracy_row(result: dict, names: list[str]) -> dict:
    row = {b: result["benchmarks"][b]["accuracy"] if b in result["benchmarks"] else None for b in names}
    row["average"] = result.get("average")
    return row


def row_delta(a: dict, b: dict) -> dict:
    return {k: _diff(a[k], b.get(k)) for k in a}


def diversity_row(diversity: dict) -> dict:
    curve = diversity.get("pass_at_k") or {}
    n = max((int(k) for k in curve), default=None)
    row = {key: diversity.get(key) for key, _, _ in DIVERSITY_COLUMNS[:-2]}
    row["pass@1"] = curve.get("1")
    row["pass@N"] = curve.get(str(n)) if n else None
    row["N"] = n
    return row


def setting_differences(settings: dict, reference: dict, prefix: str = "") -> list[dict]:
    """Dotted keys whose values differ between two experiments' merged settings."""
    out = []
    for key in sorted(set(settings) | set(reference)):
        a, b = settings.get(key), reference.get(key)
        dotted = f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += setting_differences(a, b, dotted + ".")
        elif a != b:
            out.append({"key": dotted, "value": a, "reference": b})
    return out


def _short(revision: str | None) -> str:
    if not revision:
        return "unknown"
    head, _, dirty = revision.partition("-")
    return head[:12] + (f"-{dirty}" if dirty else "")


def provenance_of(run: dict, settings: dict | None) -> dict:
    """Where an experiment's numbers came from: the hash of its merged settings, each stage's
    settings hash, and the code revision(s) that wrote its artifacts."""
    revisions: dict[str, list[str]] = {}
    for key in ("sft_train", "diversity", "rl_train", "sft_eval", "rl_eval"):
        revision = (run[key].get("provenance") or {}).get("git_revision")
        revisions.setdefault(_short(revision), []).append(ARTIFACTS[key])
    stage_hashes = {stage: (run[key].get("provenance") or {}).get("config_hash")
                    for stage, key in (("sft", "sft_train"), ("diversity", "diversity"), ("rl", "rl_train"))}
    return {"config_hash": settings_hash(settings) if settings is not None else None,
            "stage_hashes": stage_hashes, "git_revisions": revisions,
            "seed": (run["sft_train"].get("provenance") or {}).get("seed")}


def training_summary(run: dict) -> dict:
    sft, rl = sft_curve(run), rl_curve(run)
    quarter = max(1, len(rl) // 4)
    rewards = [row["reward"] for row in rl]
    return {
        "sft_loss": run["sft_train"].get("loss"),
        "sft_steps": run["sft_train"].get("global_step"),
        "sft_last_loss": sft[-1]["loss"] if sft else None,
        "sft_last_mask_rate": sft[-1].get("mask_rate") if sft else None,
        "rl_steps": run["rl_train"].get("global_step"),
        "rl_reward_first": sum(rewards[:quarter]) / quarter if rewards else None,
        "rl_reward_last": sum(rewards[-quarter:]) / quarter if rewards else None,
    }


def sampling_of(run: dict) -> dict:
    """benchmark -> (n, temperature, top_p) of the RL evaluation (the SFT one must match)."""
    return {b: [v["sampling"].get(k) for k in ("n", "temperature", "top_p")]
            for stage in STAGES for b, v in run[f"{stage}_eval"]["benchmarks"].items()}


# ----------------------------------------------------------------------------- markdown


def _cell(value, fmt: str = ".2f", signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return format(value, ("+" if signed else "") + fmt)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _relative(path: str | Path, folder: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), folder.resolve())).as_posix()


def render_markdown(summary: dict, out_md: Path) -> str:
    experiments, first = summary["experiments"], summary["experiments"][0]
    eight, extra = summary["benchmarks"], summary["extra_benchmarks"]
    names = eight + ["average"] + extra
    header = ["model"] + eight + [f"avg ({len(eight)})"] + extra
    lines = [f"# Comparison `{summary['comparison']}`: " + ", ".join(f"`{e}`" for e in experiments), ""]
    lines += [f"Accuracy (%, Avg@n over each benchmark's samples). avg = plain mean over the {len(eight)} "
              f"benchmarks (the paper's headline)" + (f"; {', '.join(extra)}: not in avg." if extra else "."), ""]
    rows = []
    for e in experiments:
        for stage in STAGES:
            acc = summary["accuracy"][e][stage]
            rows.append([f"{e} {stage.upper()}"] + [_cell(acc[n]) for n in names])
    for e in experiments:
        delta = summary["deltas"]["rl_minus_sft"][e]
        rows.append([f"Δ {e}: RL − SFT"] + [_cell(delta[n], signed=True) for n in names])
    for e in experiments[1:]:
        for stage in STAGES:
            delta = summary["deltas"]["first_minus"][e][stage]
            rows.append([f"Δ {stage.upper()}: {first} − {e}"] + [_cell(delta[n], signed=True) for n in names])
    lines += _table(header, rows)

    differences = summary.get("setting_differences") or {}
    if any(differences.values()):
        lines += ["", f"Settings that differ from `{first}`:", ""]
        for e, diffs in differences.items():
            shown = ", ".join(f"`{d['key']}` = `{json.dumps(d['value'])}` (`{first}`: `{json.dumps(d['reference'])}`)"
                              for d in diffs[:12])
            more = f", and {len(diffs) - 12} more" if len(diffs) > 12 else ""
            lines.append(f"- `{e}`: {shown or 'none'}{more}")
    reference_sampling = summary["sampling"][first]
    if any(summary["sampling"][e] != reference_sampling for e in experiments[1:]):
        lines += ["", "**Warning:** the experiments' evaluation sampling differs (n, temperature, top_p): "
                  + "; ".join(f"`{e}`: {json.dumps(summary['sampling'][e])}" for e in experiments)]

    diversity = summary["diversity"]
    ns = {row["N"] for row in diversity.values()}
    n_label = f"pass@{ns.pop()}" if len(ns) == 1 else "pass@N"
    div_header = ["SFT model"] + [h if key != "pass@N" else n_label for key, h, _ in DIVERSITY_COLUMNS]
    div_rows = [[e] + [_cell(diversity[e][key], fmt) for key, _, fmt in DIVERSITY_COLUMNS] for e in experiments]
    for e in experiments[1:]:
        div_rows.append([f"Δ {first} − {e}"] + [_cell(_diff(diversity[first][key], diversity[e][key]), fmt, signed=True)
                                                 for key, _, fmt in DIVERSITY_COLUMNS])
    lines += ["", "## Diversity of the SFT models", "",
              "N samples per prompt at temperature 1 (`sft/diversity.json`; README, \"Diversity metrics\"); "
              "pass@k here is a fraction.", ""]
    lines += _table(div_header, div_rows)

    training = summary["training"]
    lines += ["", "## Training", ""]
    lines += _table(["experiment", "sft.loss", "SFT steps", "last SFT loss", "last mask rate", "RL steps",
                     "RL reward: first → last quarter"],
                    [[e, str(t["sft_loss"]), str(t["sft_steps"]), _cell(t["sft_last_loss"], ".4f"),
                      _cell(t["sft_last_mask_rate"], ".3f"), str(t["rl_steps"]),
                      f"{_cell(t['rl_reward_first'], '.3f')} → {_cell(t['rl_reward_last'], '.3f')}"]
                     for e, t in training.items()])

    if summary.get("over_seeds"):
        from sedsft.seeds import comparison_markdown

        lines += [""] + comparison_markdown(summary["over_seeds"])

    plots = summary["plots"]
    folder = out_md.parent
    captions = {"pass_at_k": "pass@k of the SFT models (diversity prompts)",
                "diversity": "diversity metrics of the SFT models",
                "training": "SFT loss, cross-entropy and mask rate; RL reward per step",
                "seeds": "accuracy of every seed, with the mean and its 95 % interval"}
    lines += ["", "## Plots", ""]
    for key, caption in captions.items():
        if plots.get(key):
            lines += [f"![{caption}]({_relative(plots[key], folder)})", ""]

    lines += ["## Provenance", ""]
    for e in experiments:
        p = summary["provenance"][e]
        stages = ", ".join(f"{stage} `{h}`" for stage, h in p["stage_hashes"].items())
        revisions = p["git_revisions"]
        if len(revisions) == 1:
            git = f"git revision `{next(iter(revisions))}`"
        else:
            git = "git revisions " + "; ".join(f"`{r}` ({', '.join(files)})" for r, files in revisions.items())
        config = f"config hash `{p['config_hash']}`" if p["config_hash"] else "config hash unknown"
        lines.append(f"- `{e}`: {config} (stages: {stages}), {git}, seed {p['seed']}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the whole comparison


def compare(name: str, experiments: list[str], results_dir: str | Path, out_md: str | Path, *,
            pass_at_k_plot: str | Path | None = None, diversity_plot: str | Path | None = None,
            training_plot: str | Path | None = None, settings: dict[str, dict] | None = None,
            seed_runs: dict[str, dict[int, str]] | None = None, seeds_plot: str | Path | None = None) -> dict:
    """Read every experiment's artifacts, write the Markdown report and the plots; return the
    numbers (the stage's JSON summary). With `seed_runs` (experiment -> seed -> run), the report
    also tests the differences over seeds and over problems (sedsft.seeds)."""
    from sedsft.plots import plot_metrics, plot_pass_at_k, plot_seeds, plot_training
    from sedsft.seeds import compare_over_seeds

    if not experiments:
        raise ValueError(f"comparison {name!r}: no experiments")
    settings = settings or {}
    runs = {e: load_run(results_dir, e) for e in experiments}
    first = experiments[0]
    eight, extra = columns(runs)
    names = eight + extra
    accuracy = {e: {stage: accuracy_row(runs[e][f"{stage}_eval"], names) for stage in STAGES} for e in experiments}
    summary = {
        "comparison": name,
        "experiments": list(experiments),
        "benchmarks": eight,
        "extra_benchmarks": extra,
        "accuracy": accuracy,
        "deltas": {
            "rl_minus_sft": {e: row_delta(accuracy[e]["rl"], accuracy[e]["sft"]) for e in experiments},
            "first_minus": {e: {stage: row_delta(accuracy[first][stage], accuracy[e][stage]) for stage in STAGES}
                            for e in experiments[1:]},
        },
        "diversity": {e: diversity_row(runs[e]["diversity"]) for e in experiments},
        "training": {e: training_summary(runs[e]) for e in experiments},
        "sampling": {e: sampling_of(runs[e]) for e in experiments},
        "setting_differences": ({e: setting_differences(settings[e], settings[first]) for e in experiments[1:]}
                                if all(e in settings for e in experiments) else {}),
        "provenance": {e: provenance_of(runs[e], settings.get(e)) for e in experiments},
        "plots": {},
    }
    out_md = Path(out_md)
    out_md.parent.mkdir(parents=True, exist_ok=True)
    if pass_at_k_plot:
        plot_pass_at_k({f"{e} SFT": runs[e]["diversity"] for e in experiments}, pass_at_k_plot,
                       title=f"pass@k of the SFT models: {name}")
        summary["plots"]["pass_at_k"] = str(pass_at_k_plot)
    if diversity_plot:
        plot_metrics({f"{e} SFT": runs[e]["diversity"] for e in experiments}, diversity_plot,
                     title=f"diversity of the SFT models: {name}")
        summary["plots"]["diversity"] = str(diversity_plot)
    if training_plot:
        plot_training({e: {"sft": sft_curve(runs[e]), "rl": rl_curve(runs[e])} for e in experiments},
                      training_plot, title=f"training: {name}")
        summary["plots"]["training"] = str(training_plot)
    if seed_runs:
        summary["over_seeds"] = compare_over_seeds(seed_runs, results_dir)
        if seeds_plot:
            plot_seeds(summary["over_seeds"]["aggregate"], seeds_plot, title=f"{name} over seeds")
            summary["plots"]["seeds"] = str(seeds_plot)
    artifacts.write_text(out_md, render_markdown(summary, out_md))
    summary["markdown"] = str(out_md)
    return summary


# ----------------------------------------------------------------------------- the compare stage


def compare_arguments(parser) -> None:
    # --experiment names the comparison (config.yaml's `comparisons`)
    parser.add_argument("--results", required=True,
                        help="the folder holding results/<experiment>/ of each compared experiment (the workflow's)")
    parser.add_argument("--out-md", required=True, help="<comparison>.md this stage writes: the tables")
    parser.add_argument("--pass-at-k-plot", help="PNG this stage writes: the SFT models' pass@k curves")
    parser.add_argument("--diversity-plot", help="PNG this stage writes: the SFT models' diversity metrics")
    parser.add_argument("--training-plot", help="PNG this stage writes: the SFT and RL training curves")
    parser.add_argument("--seeds-plot", help="PNG this stage writes: every seed's accuracy with the intervals")


def run_compare(args, settings: dict) -> dict:
    return compare(settings["comparison"], settings["experiments"], args.results, args.out_md,
                   pass_at_k_plot=args.pass_at_k_plot, diversity_plot=args.diversity_plot,
                   training_plot=args.training_plot, settings=settings.get("settings"),
                   seed_runs={e: {int(seed): run for seed, run in runs.items()}
                              for e, runs in (settings.get("seed_runs") or {}).items()},
                   seeds_plot=args.seeds_plot)
