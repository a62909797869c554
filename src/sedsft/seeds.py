"""An experiment over its seeds, and experiments compared over seeds.

Stage `seeds` reads every seed run's `sft_eval.json`, `rl_eval.json` and SFT `diversity.json`
(results/{exp}/ under the experiment's own seed, results/{exp}.seed{N}/ under seed N) and writes
results/{exp}/seeds.json and seeds.md: per benchmark, for the mean of the eight and for each
diversity metric, the per-seed values, their mean, standard deviation and 95 % interval, the
within-seed sampling error the evaluation computed, and RL - SFT tested over seeds.

`compare_over_seeds` (results/compare/{name}.md) tests the first experiment minus each other one
twice (sedsft.stats): over seeds, and over problems from the graded files of every seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from sedsft import artifacts, stats
from sedsft.benchmarks import BENCHMARKS

STAGES = ("sft", "rl")
AVERAGE = "average"  # the mean of the eight benchmarks, as the eval result's `average`


def _read_json(path: Path) -> dict:
    with open(path) as fh:
        return json.load(fh)


def _path(results_dir: str | Path, template: str) -> Path:
    return Path(results_dir) / Path(template).relative_to(artifacts.RESULTS)


def load_runs(results_dir: str | Path, runs: dict[int, str]) -> dict[int, dict]:
    """seed -> {"sft": eval result, "rl": eval result, "diversity": the SFT model's diversity}."""
    loaded = {}
    for seed, run in runs.items():
        files = {stage: _path(results_dir, artifacts.eval_result(stage, run)) for stage in STAGES}
        files["diversity"] = _path(results_dir, artifacts.diversity_summary("sft", run))
        missing = [str(p) for p in files.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"seed {seed} ({run}) lacks {', '.join(missing)} (build them with "
                                    f"`snakemake {artifacts.eval_result('rl', run)}`)")
        loaded[seed] = {key: _read_json(path) for key, path in files.items()}
    return loaded


def accuracies(evals: dict[int, dict], stage: str) -> dict[str, dict[int, float]]:
    """benchmark (and `average`) -> seed -> accuracy, for the benchmarks every seed evaluated."""
    names = [b for b in next(iter(evals.values()))[stage]["benchmarks"]
             if all(b in e[stage]["benchmarks"] for e in evals.values())]
    out = {b: {seed: e[stage]["benchmarks"][b]["accuracy"] for seed, e in evals.items()} for b in names}
    if all(e[stage]["average"] is not None for e in evals.values()):
        out[AVERAGE] = {seed: e[stage]["average"] for seed, e in evals.items()}
    return out


def _within_seed_stderr(result: dict, name: str) -> float:
    """The evaluation's standard error over problems; for the mean of the eight, that of the mean."""
    if name != AVERAGE:
        return result["benchmarks"][name]["stderr"]
    eight = result["average_over"]
    return math.sqrt(sum(result["benchmarks"][b]["stderr"] ** 2 for b in eight)) / len(eight)


def diversity_values(evals: dict[int, dict]) -> dict[str, dict[int, float]]:
    from sedsft.compare import diversity_row  # compare imports this module

    rows = {seed: diversity_row(e["diversity"]) for seed, e in evals.items()}
    keys = [k for k in next(iter(rows.values())) if k != "N"]
    return {k: {seed: row[k] for seed, row in rows.items()} for k in keys
            if all(row.get(k) is not None for row in rows.values())}


def aggregate(experiment: str, runs: dict[int, str], results_dir: str | Path) -> dict:
    """The stage's summary: every number of results/{exp}/seeds.json."""
    evals = load_runs(results_dir, runs)
    seeds = sorted(runs)
    summary = {"experiment": experiment, "seeds": seeds, "runs": {str(s): runs[s] for s in seeds},
               "confidence": stats.CONFIDENCE}
    acc = {stage: accuracies(evals, stage) for stage in STAGES}
    for stage in STAGES:
        summary[stage] = {name: {**stats.interval([by_seed[s] for s in seeds]),
                                 "within_seed_stderr": [_within_seed_stderr(evals[s][stage], name) for s in seeds]}
                          for name, by_seed in acc[stage].items()}
    summary["rl_minus_sft"] = {name: stats.seed_difference(acc["rl"][name], acc["sft"][name])
                               for name in acc["rl"] if name in acc["sft"]}
    summary["diversity"] = {key: stats.interval([by_seed[s] for s in seeds])
                            for key, by_seed in diversity_values(evals).items()}
    return summary


# ----------------------------------------------------------------------------- problem level


def _graded(results_dir: str | Path, stage: str, bench: str, run: str) -> dict[str, list[bool]]:
    path = _path(results_dir, artifacts.graded(stage, bench, run))
    with open(path) as fh:
        return {row["id"]: row["correct"] for row in map(json.loads, fh) if row}


def problem_accuracies(results_dir: str | Path, runs: dict[int, str], stage: str, bench: str) -> dict[str, float]:
    """problem id -> the share of its samples graded right, the samples of every seed pooled."""
    pooled: dict[str, list[bool]] = {}
    for run in runs.values():
        for problem, correct in _graded(results_dir, stage, bench, run).items():
            pooled.setdefault(problem, []).extend(correct)
    return {problem: 100 * sum(c) / len(c) for problem, c in pooled.items() if c}


def problem_difference(results_dir: str | Path, a_runs: dict[int, str], b_runs: dict[int, str], stage: str,
                       names: list[str]) -> dict:
    """a - b over the problems both graded: one benchmark's accuracy, or (several names) their plain mean."""
    a_values, b_values, weights = [], [], []
    for bench in names:
        a = problem_accuracies(results_dir, a_runs, stage, bench)
        b = problem_accuracies(results_dir, b_runs, stage, bench)
        shared = sorted(set(a) & set(b))
        a_values += [a[p] for p in shared]
        b_values += [b[p] for p in shared]
        weights += [1 / (len(shared) * len(names))] * len(shared)
    return stats.problem_difference(a_values, b_values, weights)


# ----------------------------------------------------------------------------- comparing experiments


def compare_over_seeds(seed_runs: dict[str, dict[int, str]], results_dir: str | Path) -> dict:
    """The first experiment minus each other one, per stage, for every benchmark they share and
    the mean of the eight: over seeds and over problems; and each SFT diversity metric over seeds."""
    experiments = list(seed_runs)
    evals = {e: load_runs(results_dir, seed_runs[e]) for e in experiments}
    first = experiments[0]
    out = {"reference": first, "seeds": {e: sorted(seed_runs[e]) for e in experiments},
           "per_seed": {e: {stage: accuracies(evals[e], stage) for stage in STAGES} for e in experiments},
           "aggregate": {e: {stage: {name: stats.interval(list(v.values())) for name, v in
                                     accuracies(evals[e], stage).items()} for stage in STAGES} for e in experiments},
           "differences": {}}
    for other in experiments[1:]:
        diff = {}
        for stage in STAGES:
            a, b = out["per_seed"][first][stage], out["per_seed"][other][stage]
            diff[stage] = {}
            for name in [n for n in a if n in b]:
                eight = [x for x in BENCHMARKS if x in a and x in b] if name == AVERAGE else [name]
                diff[stage][name] = {
                    "over_seeds": stats.seed_difference(a[name], b[name]),
                    "over_problems": problem_difference(results_dir, seed_runs[first], seed_runs[other], stage, eight),
                }
        da, db = diversity_values(evals[first]), diversity_values(evals[other])
        diff["diversity"] = {k: stats.seed_difference(da[k], db[k]) for k in da if k in db}
        out["differences"][other] = diff
    return out


def load_diversity(results_dir: str | Path, runs: dict[int, str]) -> dict[int, dict]:
    """seed -> {"diversity": the SFT model's diversity summary}: all the SFT-diversity comparison reads."""
    loaded = {}
    for seed, run in runs.items():
        path = _path(results_dir, artifacts.diversity_summary("sft", run))
        if not path.is_file():
            raise FileNotFoundError(f"seed {seed} ({run}) lacks {path} (build it with "
                                    f"`snakemake {artifacts.diversity_summary('sft', run)}`)")
        loaded[seed] = {"diversity": _read_json(path)}
    return loaded


def compare_diversity_over_seeds(seed_runs: dict[str, dict[int, str]], results_dir: str | Path) -> dict:
    """The SFT models' diversity only (results/compare/sft_diversity/{name}.md): per experiment
    every metric over seeds, and the first experiment minus each other one tested over seeds. It
    needs no RL and no evaluation, so a real model's comparison of the method's direct claim
    costs SFT and sampling only."""
    experiments = list(seed_runs)
    values = {e: diversity_values(load_diversity(results_dir, seed_runs[e])) for e in experiments}
    first = experiments[0]
    return {"reference": first, "seeds": {e: sorted(seed_runs[e]) for e in experiments},
            "per_seed": values,
            "aggregate": {e: {key: stats.interval(list(by_seed.values())) for key, by_seed in values[e].items()}
                          for e in experiments},
            "differences": {other: {key: stats.seed_difference(values[first][key], values[other][key])
                                    for key in values[first] if key in values[other]}
                            for other in experiments[1:]}}


def readings(comparison: dict) -> list[str]:
    """The plain lines: the mean of the eight (and the tiny task's own test set) per stage."""
    lines = []
    first = comparison["reference"]
    for other, diff in comparison["differences"].items():
        for stage in STAGES:
            for name, label in ((AVERAGE, "the mean of the eight"), ("tiny", "the tiny test set")):
                if name in diff[stage]:
                    lines.append(stats.reading(f"{first} − {other} after {stage.upper()}, on {label}",
                                               diff[stage][name]["over_seeds"]))
    return lines


# ----------------------------------------------------------------------------- Markdown


def _num(value, fmt: str = ".2f", signed: bool = False) -> str:
    if value is None:
        return "–"
    return format(value, ("+" if signed else "") + fmt)


def _ci(ci, fmt: str = ".2f") -> str:
    return "–" if ci is None else f"[{_num(ci[0], fmt)}, {_num(ci[1], fmt)}]"


def _planned(value) -> str:
    if value is None:
        return "–"
    return f"> {stats.MAX_PLANNED - 1}" if value >= stats.MAX_PLANNED else str(value)


def aggregate_markdown(summary: dict) -> str:
    seeds = summary["seeds"]
    lines = [f"# {summary['experiment']} over {len(seeds)} seeds ({', '.join(map(str, seeds))})", "",
             "Accuracy (points). sd and the 95 % t interval are over seeds; the within-seed se is the "
             "evaluation's standard error over problems (mean over seeds).", ""]
    header = ["benchmark", *[f"seed {s}" for s in seeds], "mean", "sd", "95 % CI", "within-seed se"]
    for stage in STAGES:
        lines += [f"## {stage.upper()}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for name, row in summary[stage].items():
            within = sum(row["within_seed_stderr"]) / len(row["within_seed_stderr"])
            cells = [name, *[_num(v) for v in row["values"]], _num(row["mean"]), _num(row["sd"]), _ci(row["ci95"]),
                     _num(within)]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## RL − SFT", "", "| benchmark | difference | 95 % CI | p | test | seeds for 80 % power |",
              "|---|---|---|---|---|---|"]
    for name, d in summary["rl_minus_sft"].items():
        lines.append(f"| {name} | {_num(d['difference'], signed=True)} | {_ci(d['ci95'])} | {_num(d['p'], '.3g')} "
                     f"| {d['test'] or '–'} | {_planned(d['seeds_needed'])} |")
    for name, label in ((AVERAGE, "the mean of the eight"), ("tiny", "the tiny test set")):
        if name in summary["rl_minus_sft"]:
            lines += ["", stats.reading(f"RL − SFT on {label}", summary["rl_minus_sft"][name])]
    lines += ["", "## SFT diversity", "", "| metric | mean | sd | 95 % CI |", "|---|---|---|---|"]
    for key, row in summary["diversity"].items():
        lines.append(f"| {key} | {_num(row['mean'], '.3f')} | {_num(row['sd'], '.3f')} | {_ci(row['ci95'], '.3f')} |")
    return "\n".join(lines) + "\n"


def comparison_markdown(comparison: dict) -> list[str]:
    """The section of results/compare/{name}.md on seeds."""
    first = comparison["reference"]
    seeds = ", ".join(f"`{e}` {len(s)} ({', '.join(map(str, s))})" for e, s in comparison["seeds"].items())
    lines = ["## Over seeds", "", f"Seeds: {seeds}. Each difference is tested twice: over seeds (does the recipe "
             "differ? one value per seed) and over problems (do these models differ on these problems? every "
             "graded sample of every seed, paired by problem; it ignores the spread between trainings).", ""]
    lines += [f"- {line}" for line in readings(comparison)]
    for other, diff in comparison["differences"].items():
        for stage in STAGES:
            lines += ["", f"### {first} − {other}, {stage.upper()} accuracy (points)", "",
                      "| benchmark | difference | 95 % CI (seeds) | p (seeds) | seeds for 80 % power "
                      "| 95 % CI (problems) | p (problems) | problems for 80 % power |",
                      "|---|---|---|---|---|---|---|---|"]
            for name, d in diff[stage].items():
                s, p = d["over_seeds"], d["over_problems"]
                lines.append(f"| {name} | {_num(s['difference'], signed=True)} | {_ci(s['ci95'])} | {_num(s['p'], '.3g')} "
                             f"| {_planned(s['seeds_needed'])} | {_ci(p['ci95'])} | {_num(p['p'], '.3g')} "
                             f"| {_planned(p['problems_needed'])} (now {p['n_problems']}) |")
            tests = {d["over_seeds"]["test"] for d in diff[stage].values()} - {None}
            lines.append("")
            lines.append(f"Tests: over seeds, {'; '.join(sorted(tests)) or 'none (one seed per side)'}; over "
                         f"problems, a {stats.PROBLEM_TEST} with a paired percentile bootstrap interval "
                         f"({stats.RESAMPLES} resamples).")
        lines += ["", f"### {first} − {other}, SFT diversity over seeds", "",
                  "| metric | difference | 95 % CI | p | seeds for 80 % power |", "|---|---|---|---|---|"]
        for key, d in diff["diversity"].items():
            lines.append(f"| {key} | {_num(d['difference'], '.3f', signed=True)} | {_ci(d['ci95'], '.3f')} "
                         f"| {_num(d['p'], '.3g')} | {_planned(d['seeds_needed'])} |")
    return lines


def diversity_comparison_markdown(name: str, comparison: dict, plot: str | None = None) -> str:
    first = comparison["reference"]
    seeds = ", ".join(f"`{e}` {len(s)} ({', '.join(map(str, s))})" for e, s in comparison["seeds"].items())
    lines = [f"# {name}: diversity of the SFT models over seeds", "",
             f"Seeds: {seeds}. Each metric is computed from the SFT model's own samples "
             "(results/<run>/sft/diversity.json); mean, sd and the 95 % t interval are over seeds.", ""]
    experiments = list(comparison["aggregate"])
    header = ["metric", *[f"`{e}` mean [95 % CI]" for e in experiments]]
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for key in comparison["aggregate"][first]:
        cells = [key] + [f"{_num(comparison['aggregate'][e][key]['mean'], '.3f')} "
                         f"{_ci(comparison['aggregate'][e][key]['ci95'], '.3f')}"
                         if key in comparison["aggregate"][e] else "–" for e in experiments]
        lines.append("| " + " | ".join(cells) + " |")
    for other, diff in comparison["differences"].items():
        lines += ["", f"## {first} − {other}", "",
                  "| metric | difference | 95 % CI | p | test | seeds for 80 % power |", "|---|---|---|---|---|---|"]
        for key, d in diff.items():
            lines.append(f"| {key} | {_num(d['difference'], '.3f', signed=True)} | {_ci(d['ci95'], '.3f')} "
                         f"| {_num(d['p'], '.3g')} | {d['test'] or '–'} | {_planned(d['seeds_needed'])} |")
        lines.append("")
        for key, d in diff.items():
            lines.append(f"- {stats.reading(f'{first} − {other}, SFT {key}', d, unit='', digits=3)}")
    if plot:
        lines += ["", f"![every seed's value, the mean and its interval]({Path(plot).name})"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the compare_diversity stage


def compare_diversity_arguments(parser) -> None:
    # --experiment names the comparison (config.yaml's `comparisons`)
    parser.add_argument("--results", required=True, help="the folder holding results/<run>/ of every seed run")
    parser.add_argument("--out-md", required=True, help="<comparison>.md this stage writes: the tables")
    parser.add_argument("--plot", help="PNG this stage writes: every seed's value with the intervals")


def run_compare_diversity(args, settings: dict) -> dict:
    """settings: the comparison (common.smk comparison_json); its seed runs, or when run by hand
    from --config, each experiment's own."""
    from sedsft.config import seed_runs

    runs = settings.get("seed_runs") or {e: seed_runs(e, settings["settings"][e]) for e in settings["experiments"]}
    runs = {e: {int(seed): run for seed, run in runs[e].items()} for e in settings["experiments"]}
    summary = {"comparison": settings["comparison"], **compare_diversity_over_seeds(runs, args.results)}
    if args.plot:
        from sedsft.plots import plot_seeds

        plot_seeds({e: {"sft": rows} for e, rows in summary["aggregate"].items()}, args.plot,
                   title=f"{settings['comparison']}: SFT diversity", names=tuple(summary["aggregate"][summary["reference"]]),
                   ylabel="value")
        summary["plot"] = str(args.plot)
    artifacts.write_text(args.out_md, diversity_comparison_markdown(settings["comparison"], summary, args.plot))
    return summary


# ----------------------------------------------------------------------------- the seeds stage


def seeds_arguments(parser) -> None:
    parser.add_argument("--results", required=True, help="the folder holding results/<run>/ of every seed run")
    parser.add_argument("--out-md", required=True, help="seeds.md this stage writes: the tables")
    parser.add_argument("--plot", help="PNG this stage writes: every seed's accuracy with the intervals")


def run_seeds(args, settings: dict) -> dict:
    """settings: {"experiment": name, "runs": {seed: run}} (common.smk seed_runs_json)."""
    runs = {int(seed): run for seed, run in settings["runs"].items()}
    summary = aggregate(settings["experiment"], runs, args.results)
    artifacts.write_text(args.out_md, aggregate_markdown(summary))
    if args.plot:
        from sedsft.plots import plot_seeds

        plot_seeds({settings["experiment"]: {stage: summary[stage] for stage in STAGES}}, args.plot,
                   title=f"{settings['experiment']} over seeds")
        summary["plot"] = str(args.plot)
    return summary
