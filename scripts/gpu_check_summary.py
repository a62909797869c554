"""The Python half of scripts/gpu_check.sh: probe the machine, run the loss perf script into JSON,
and print the one summary block from the logs and the workflow's artifacts.

    python3 scripts/gpu_check_summary.py env --json LOGS/checks.json
    python3 scripts/gpu_check_summary.py perf --json LOGS/checks.json -- --device cuda --tokens 8192 ...
    python3 scripts/gpu_check_summary.py summary --logs LOGS --results results/tiny_gpu

`env` and `perf` each add one key to the JSON file (`env`, `perf`); `summary` reads it, the
step table LOGS/steps.tsv (name, status, seconds, exit code, log file, time limit) that
gpu_check.sh writes, the step logs, and under --results the workflow's timings
(timings/*.tsv), SFT metrics (sft/metrics.jsonl, sft/train.json), GRPO log (rl/train.json)
and evaluations (sft_eval.json, rl_eval.json). Whatever is missing is reported as missing: the
summary never fails because a step did.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if importlib.util.find_spec("sedsft") is None:  # run by hand, outside gpu_check.sh and an install
    sys.path.append(str(REPO / "src"))

from sedsft import artifacts  # noqa: E402 - the standard library only, so a broken stack still gets its summary
from sedsft.artifacts import read_json_or_none as read_json, read_jsonl_lines_that_parse as read_jsonl  # noqa: E402

# what the probe reports (the stack a GPU run needs), beside what provenance records in artifacts
PACKAGES = ("torch", "transformers", "accelerate", "trl", "deepspeed", "datasets", "snakemake",
            "math-verify", "jsonschema", "pandas", "pyarrow", "vllm")
PERF_METHODS = ("naive_ce", "upstream_sed", "fused_ce", "fused_sed", "checkpointed_sed")
# the CE losses a user would install instead (perf/loss.py); the goal: fused_sed within 1.10x the
# time and 1.05x the memory of the best of them
PEER_METHODS = ("chunked_ce", "liger_ce", "cce_ce")
# checks.json keys of the loss perf runs (gpu_check.sh steps perf, perf7b): the scale each measures
PERF_RUNS = {"perf": "Llama-3.2-3B scale", "perf7b": "Qwen2.5-7B scale"}
# pipeline order of the per-rule timings; generate/grade/benchmark_data jobs are grouped
STAGE_ORDER = ("tiny_task", "base_model", "sft_data", "rl_prompts", "benchmark_data", "threshold", "sft",
               "diversity_sft", "generate_sft", "grade_sft", "eval_report_sft", "rl", "generate_rl",
               "grade_rl", "eval_report_rl", "diversity_rl")
WIDTH = 78
# what the summary reads inside the experiment folder --results names
TIMINGS = artifacts.relative(artifacts.job_timing("*"))
SFT_METRICS = artifacts.relative(artifacts.sft_metrics())
SFT_TRAIN = artifacts.relative(artifacts.train_summary("sft"))
SFT_MODEL = artifacts.relative(artifacts.model("sft"))
RL_TRAIN = artifacts.relative(artifacts.train_summary("rl"))


# ----------------------------------------------------------------------------- JSON store


def update_json(path: Path, key: str, value) -> None:
    data = read_json(path) or {}
    data[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    artifacts.write_text(path, json.dumps(data, indent=1, default=str))


# ----------------------------------------------------------------------------- env


def _run(command: list[str]) -> str | None:
    if not shutil.which(command[0]):
        return None
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout + out.stderr).strip() or None


def probe_env() -> dict:
    """What this machine offers: GPUs (nvidia-smi and torch), package versions, vLLM."""
    import platform

    from sedsft.provenance import package_versions

    env: dict = {"python": platform.python_version(), "nvidia_smi": _run(["nvidia-smi", "-L"]),
                 "gpu_query": _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                    "--format=csv,noheader"])}
    versions = env["packages"] = package_versions(PACKAGES)
    env["vllm"] = importlib.util.find_spec("vllm") is not None
    spec = importlib.util.find_spec("sedsft")
    env["sedsft_from"] = str(Path(spec.origin).parent) if spec and spec.origin else None
    try:
        import torch

        env["torch"] = torch.__version__
        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        if env["cuda_available"]:
            env["device_count"] = torch.cuda.device_count()
            env["device_name"] = torch.cuda.get_device_name(0)
            env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
            env["bf16"] = torch.cuda.is_bf16_supported()
            env["memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except Exception as error:  # noqa: BLE001 - a broken torch is a finding, not a crash
        env["torch_error"] = f"{type(error).__name__}: {error}"
    if versions["deepspeed"]:
        try:
            from deepspeed.accelerator import get_accelerator

            env["deepspeed_accelerator"] = get_accelerator()._name
        except Exception as error:  # noqa: BLE001
            env["deepspeed_accelerator"] = f"import failed: {type(error).__name__}: {error}"
    return env


def print_env(env: dict) -> None:
    print(env.get("nvidia_smi") or "nvidia-smi: not available")
    print(f"python {env.get('python')}, torch {env.get('torch')} (CUDA {env.get('torch_cuda')}), "
          f"cuda available: {env.get('cuda_available')}")
    if env.get("device_name"):
        print(f"device 0: {env['device_name']}, compute capability {env.get('capability')}, "
              f"{env.get('memory_gib')} GiB, bf16 {env.get('bf16')}, {env.get('device_count')} visible")
    if env.get("torch_error"):
        print(f"torch: {env['torch_error']}")
    print("packages: " + ", ".join(f"{k} {v or 'MISSING'}" for k, v in env["packages"].items()))
    print(f"sedsft imported from {env.get('sedsft_from')}")
    if "deepspeed_accelerator" in env:
        print(f"deepspeed accelerator: {env['deepspeed_accelerator']}")
    print(vllm_line(env))


def vllm_line(env: dict) -> str:
    if env.get("vllm"):
        return f"vLLM      : installed ({env['packages'].get('vllm')}): evaluation (eval.backend auto) generates with vLLM"
    return ("vLLM      : NOT installed: evaluation (eval.backend auto) falls back to HF generate, and GRPO rollouts "
            "use HF generate")


# ----------------------------------------------------------------------------- perf


def run_loss_perf(argv: list[str]) -> list[dict]:
    """perf/loss.py's main(argv): prints its table, returns its rows."""
    spec = importlib.util.spec_from_file_location("perf_loss", REPO / "perf" / "loss.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(argv)
    sys.stdout.flush()
    return rows


def perf_lines(perf: dict | None) -> list[str]:
    """The loss perf table plus the ratios of the fused SED loss to each other method."""
    if not perf or not perf.get("rows"):
        return ["(no loss perf rows)"]
    rows = {r["name"]: r for r in perf["rows"]}
    # CUDA: the allocator's peak; CPU: the largest tensor any op creates (rss needs fresh processes)
    mem_key = next((k for k in ("peak", "largest") if k in perf["rows"][0]), None)
    base = rows.get("naive_ce", perf["rows"][0])
    mem_name = mem_key or "memory"
    lines = ["perf/loss.py " + " ".join(perf.get("args", [])),
             f"  {'method':<18}{'loss':>9}{'time ms':>10}{'x time':>8}{mem_name:>12}{'x ' + mem_name:>10}"]
    for name in [m for m in PERF_METHODS if m in rows] + [m for m in rows if m not in PERF_METHODS]:
        r = rows[name]
        mem = r.get(mem_key) if mem_key else None
        lines.append(f"  {name:<18}{_num(r.get('loss'), '.4f'):>9}{_num(_ms(r.get('time')), '.1f'):>10}"
                     f"{_num(_ratio(r.get('time'), base.get('time')), '.2f'):>8}{_bytes(mem):>12}"
                     f"{_num(_ratio(mem, base.get(mem_key)), '.2f'):>10}")
    sed = rows.get("fused_sed")
    if sed:
        for other in ("fused_ce", "naive_ce", "upstream_sed", *PEER_METHODS):
            if other in rows:
                o = rows[other]
                lines.append(f"  fused_sed / {other:<13} time x{_num(_ratio(sed.get('time'), o.get('time')), '.2f')}"
                             f", {mem_name} x{_num(_ratio(sed.get(mem_key), o.get(mem_key)), '.2f')}")
        peers = [rows[m] for m in PEER_METHODS if m in rows and rows[m].get("time") == rows[m].get("time")]
        if peers:
            best = min(peers, key=lambda r: r["time"])
            lines.append(f"  fused_sed vs the fastest peer CE ({best['name']}): time x"
                         f"{_num(_ratio(sed.get('time'), best.get('time')), '.2f')} (goal <= 1.10), {mem_name} x"
                         f"{_num(_ratio(sed.get(mem_key), best.get(mem_key)), '.2f')} (goal <= 1.05)")
    return lines


def _ms(seconds):
    return None if seconds is None else 1000 * seconds


def _ratio(a, b):
    try:
        return a / b if b else None
    except TypeError:
        return None


def _num(x, fmt: str) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return format(x, fmt)


def _bytes(n) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


# ----------------------------------------------------------------------------- steps and logs


def read_steps(logs: Path) -> list[dict]:
    """steps.tsv rows: name, status, seconds, rc, log, limit, note (the last row of a name wins)."""
    steps: dict[str, dict] = {}
    try:
        with open(logs / "steps.tsv") as fh:
            for row in csv.reader(fh, delimiter="\t"):
                if len(row) >= 3 and row[0] != "name":
                    row += [""] * (7 - len(row))
                    steps[row[0]] = dict(zip(("name", "status", "seconds", "rc", "log", "limit", "note"), row))
    except OSError:
        pass
    return list(steps.values())


def failure_reason(step: dict, logs: Path) -> str:
    rc = step.get("rc", "")
    if rc in ("124", "137"):
        return f"timed out after {step.get('limit') or '?'} s"
    reason = f"exit code {rc}" if rc else "failed"
    last = step.get("note") or (last_line(logs / step["log"]) if step.get("log") else None)
    return f"{reason}: {last}" if last else reason


def last_line(path: Path, pattern: str | None = None) -> str | None:
    """The last non-blank line of a file (matching `pattern` if given), shortened."""
    try:
        lines = [line.strip() for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    if pattern:
        lines = [line for line in lines if re.search(pattern, line)]
    if not lines:
        return None
    line = lines[-1]
    return line if len(line) <= 160 else line[:157] + "..."


def pytest_line(path: Path) -> str | None:
    line = last_line(path, r"\d+ (passed|failed|error|errors|skipped)\b|no tests ran")
    return line.strip("= ") if line else None


def workflow_errors(path: Path) -> list[str]:
    """Snakemake's 'Error in rule X' lines and the rule logs it names."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return []
    rules = sorted(set(re.findall(r"Error in rule (\w+)", text)))
    logs = sorted(set(re.findall(r"log: (results/\S+\.log)", text)))
    out = [f"failed rules: {', '.join(rules)}"] if rules else []
    return out + ([f"rule logs: {', '.join(logs[:4])}"] if logs else [])


# ----------------------------------------------------------------------------- artifacts


def stage_times(results: Path) -> list[str]:
    groups: dict[str, list[tuple[float, float | None]]] = {}
    for tsv in sorted(results.glob(TIMINGS)):
        try:
            with open(tsv) as fh:
                row = next(csv.DictReader(fh, delimiter="\t"))
            seconds = float(row["s"])
            rss = float(row["max_rss"]) if row.get("max_rss") not in (None, "", "-", "NA") else None
        except (OSError, StopIteration, KeyError, ValueError):
            continue
        stem = tsv.stem
        match = re.match(r"^(generate|grade)_(sft|rl)_.+$", stem) or re.match(r"^(benchmark_data)_.+$", stem)
        name = "_".join(g for g in match.groups() if g) if match else stem
        groups.setdefault(name, []).append((seconds, rss))
    order = [s for s in STAGE_ORDER if s in groups] + sorted(set(groups) - set(STAGE_ORDER))
    lines = []
    for name in order:
        jobs = groups[name]
        rss = max((r for _, r in jobs if r is not None), default=None)
        rss_text = f", max RSS {rss:.0f} MB" if rss is not None else ""
        if len(jobs) == 1:
            lines.append(f"  {name:<18}{jobs[0][0]:>8.1f} s{rss_text}")
        else:
            lines.append(f"  {name:<18}{max(s for s, _ in jobs):>8.1f} s max, {sum(s for s, _ in jobs):.1f} s "
                         f"over {len(jobs)} jobs{rss_text}")
    return lines


def sft_lines(results: Path) -> list[str]:
    records = read_jsonl(results / SFT_METRICS)
    train = read_json(results / SFT_TRAIN) or {}
    logged = [r for r in records if "loss" in r]
    if not logged and not train:
        return [f"SFT       : no {SFT_METRICS} or {SFT_TRAIN}"]
    parts = []
    if logged:
        last = logged[-1]
        parts.append(f"final loss {_num(last.get('loss'), '.4f')} (step {last.get('step')})")
        if "ce" in last:
            parts.append(f"CE {_num(last['ce'], '.4f')}")
        speeds = [r["tokens_per_s"] for r in logged if isinstance(r.get("tokens_per_s"), (int, float))]
        if speeds:
            steady = speeds[1:] or speeds  # the first window holds start-up
            parts.append(f"label tokens/s {_num(speeds[-1], ',.0f')} last, "
                         f"{_num(sum(steady) / len(steady), ',.0f')} mean")
    final = next((r for r in reversed(records) if "train_runtime" in r), None)
    if final:
        parts.append(f"train_runtime {_num(final['train_runtime'], '.1f')} s")
    if train:
        parts.append(f"steps {train.get('global_step')}, deepspeed {train.get('deepspeed')}, "
                     f"world size {train.get('world_size')}, loss {train.get('loss')} ({train.get('loss_impl')})")
    saved = read_json(results / SFT_MODEL / "config.json")
    if saved:  # bf16 training saves a bf16 model
        parts.append(f"saved dtype {saved.get('dtype') or saved.get('torch_dtype')}")
    return ["SFT       : " + "; ".join(parts)]


def rl_lines(results: Path) -> list[str]:
    train = read_json(results / RL_TRAIN)
    if not train:
        return [f"GRPO      : no {RL_TRAIN}"]
    logged = [r for r in train.get("log_history", []) if "reward" in r]
    parts = [f"{train.get('global_step')} steps, {train.get('prompts')} prompts"]
    if logged:
        last = logged[-1]
        parts.append(f"last reward {_num(last.get('reward'), '.3f')}")
        if "step_time" in last:
            parts.append(f"step time {_num(last['step_time'], '.2f')} s")
    final = next((r for r in reversed(train.get("log_history", [])) if "train_runtime" in r), None)
    if final:
        parts.append(f"train_runtime {_num(final['train_runtime'], '.1f')} s")
    return ["GRPO      : " + "; ".join(parts)]


def eval_lines(results: Path, env: dict | None) -> list[str]:
    lines, backends = [], set()
    for stage in ("sft", "rl"):
        path = artifacts.relative(artifacts.eval_result(stage))
        report = read_json(results / path)
        if not report:
            lines.append(f"  {stage}: no {path}")
            continue
        benches = report.get("benchmarks", {})
        backends |= {b.get("backend") for b in benches.values() if b.get("backend")}
        scores = ", ".join(f"{name} {_num(b.get('accuracy'), '.1f')}" for name, b in benches.items())
        lines.append(f"  {stage}: average(8) {_num(report.get('average'), '.2f')} | {scores}")
    if backends:
        backend = ", ".join(sorted(backends))
        note = ""
        if env is not None and not env.get("vllm") and backends == {"hf"}:
            note = " (vLLM is not installed here, so eval.backend auto picked HF generate)"
        lines.insert(0, f"eval      : generation backend {backend}{note}; accuracy in %")
    else:
        lines.insert(0, "eval      : no evaluation results")
    return lines


# ----------------------------------------------------------------------------- summary


def gpu_visibility_lines(results: Path) -> list[str]:
    """Per stage summary: the GPUs its job asked for and how many torch saw (provenance.gpus,
    written by sedsft.cli); a stage that saw more is flagged."""
    seen = {}
    for path in sorted(results.rglob("*.json")) if results.is_dir() else []:
        data = read_json(path) if path.stat().st_size < 2 ** 24 else None
        gpus = (data.get("provenance") or {}).get("gpus") if isinstance(data, dict) else None
        if isinstance(gpus, dict):
            seen[str(path.relative_to(results))] = gpus
    if not seen:
        return ["gpus      : no stage recorded its GPUs"]
    over = [f"{name} (job {g['job']}, saw {g['seen_by_torch']})" for name, g in seen.items()
            if isinstance(g.get("seen_by_torch"), int) and g["seen_by_torch"] > g["job"]]
    counts = sorted({f"job {g['job']} -> saw {g['seen_by_torch']}" for g in seen.values()})
    verdict = f"MORE THAN ASKED: {', '.join(over)}" if over else "none saw more than its job asked for"
    return [f"gpus      : {len(seen)} stage summaries; {verdict} ({'; '.join(counts)})"]


def summary(logs: Path, results: Path, elapsed: float | None = None) -> str:
    checks = read_json(logs / "checks.json") or {}
    env = checks.get("env")
    out = ["=" * WIDTH, "sedsft GPU check: summary", "=" * WIDTH]
    if env:
        gpu = env.get("gpu_query") or env.get("nvidia_smi") or "nvidia-smi not available"
        out.append(f"GPU       : {gpu.splitlines()[0] if gpu else gpu}")
        out.append(f"torch     : {env.get('torch')} (CUDA {env.get('torch_cuda')}), device "
                   f"{env.get('device_name') or 'none (CPU)'}, bf16 {env.get('bf16', False)}, python {env.get('python')}")
        missing = [k for k, v in env.get("packages", {}).items() if v is None and k != "vllm"]
        out.append("packages  : " + ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items()
                                               if v is not None and k != "torch")
                   + (f"; MISSING: {', '.join(missing)}" if missing else ""))
        out.append(vllm_line(env))
    else:
        out.append("machine   : no environment probe (checks.json has no 'env')")
    out.append("steps     :")
    steps = read_steps(logs)
    if not steps:
        out.append("  (no steps.tsv)")
    for step in steps:
        status = step["status"]
        text = f"  {step['name']:<10}{status:<8}{step['seconds']:>6} s"
        if status == "FAILED":
            text += f"  {failure_reason(step, logs)}"
        out.append(text)
    by_name = {s["name"]: s for s in steps}
    for key, scale in PERF_RUNS.items():
        out.append(f"loss perf, {scale} (forward + backward; x = relative to naive_ce):")
        out += ["  " + line if not line.startswith("  ") else line for line in perf_lines(checks.get(key))]
    for name in ("pytest", "gpuonly"):
        step = by_name.get(name)
        if step and step["status"] != "SKIPPED":
            out.append(f"{name:<10}: {pytest_line(logs / (step.get('log') or f'{name}.log')) or 'no result line'}")
    workflow = by_name.get("workflow")
    stale = " - NOT run this time: from an earlier run" if workflow and workflow["status"] == "SKIPPED" else ""
    out.append(f"workflow  : per-rule wall time ({results}/{TIMINGS}){stale}")
    times = stage_times(results)
    out += times or ["  (no timings)"]
    if workflow and workflow["status"] == "FAILED":
        out += ["  " + line for line in workflow_errors(logs / (workflow.get("log") or "workflow.log"))]
    out += gpu_visibility_lines(results)
    out += sft_lines(results)
    out += rl_lines(results)
    out += eval_lines(results, env)
    if elapsed is not None:
        out.append(f"elapsed   : {elapsed:.0f} s in all")
    out.append(f"logs      : {logs}")
    out.append("=" * WIDTH)
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("env", help="probe the machine; print it and store it under 'env'")
    e.add_argument("--json", type=Path, required=True)
    b = sub.add_parser("perf", help="run perf/loss.py with the arguments after --")
    b.add_argument("--json", type=Path, required=True)
    b.add_argument("--key", choices=sorted(PERF_RUNS), default="perf", help="where in the JSON the rows go")
    b.add_argument("args", nargs=argparse.REMAINDER)
    s = sub.add_parser("summary", help="print the summary block")
    s.add_argument("--logs", type=Path, required=True)
    s.add_argument("--results", type=Path, required=True)
    s.add_argument("--out", type=Path, help="also write the block here")
    s.add_argument("--elapsed", type=float, help="seconds the whole check took")
    args = p.parse_args(argv)
    if args.command == "env":
        env = probe_env()
        update_json(args.json, "env", env)
        print_env(env)
        return 0
    if args.command == "perf":
        perf_args = args.args[1:] if args.args[:1] == ["--"] else args.args
        rows = run_loss_perf(perf_args)
        update_json(args.json, args.key, {"args": perf_args, "rows": rows})
        return 0
    text = summary(args.logs, args.results, args.elapsed)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
