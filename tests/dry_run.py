"""One dry run of the workflow for every test that reads the plan of the shipped config.yaml.

`snakemake -n -p` over PLAN_TARGETS, once per test session, parsed into jobs (rule, inputs,
outputs, wildcards, shell command). `Plan.needed(target)` walks the DAG back from a target
through the jobs that produce its inputs, so each test sees exactly the jobs its own target needs,
as a dry run of that target alone would plan them, while Snakemake loads the workflow and builds
the DAG once instead of once per test (each load costs seconds)."""

from __future__ import annotations

import atexit
import functools
import re
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from workflow_helpers import snakemake

PLAN_TARGETS = (
    "results/llama3b/rl_eval.json",
    "results/llama3b/base_eval.json",
    "results/tiny/rl_eval.json",
    "results/tiny_ce/rl_eval.json",
    "results/tiny/base_eval.json",
    "results/tiny/base/diversity.json",
    "results/tiny/sft/diversity.json",
    "results/tiny/rl/diversity.json",
    "results/smollm2/rl_eval.json",
    "results/smollm2_hub/rl_eval.json",
    "results/tiny_gpu/rl_eval.json",
    "results/compare/tiny.md",
    "results/compare/llama3b.md",
    "results/compare/sft_diversity/smollm2.md",
)


@dataclass(frozen=True)
class Job:
    rule: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    wildcards: tuple[tuple[str, str], ...]
    shell: str


def _paths(value: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in value.split(", ") if p.strip())


def parse_jobs(stdout: str) -> list[Job]:
    """The job blocks of `snakemake -n -p` output ("rule NAME:", indented fields, "Shell command:")."""
    jobs = []
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", stdout, flags=re.MULTILINE)[1:]:
        lines = block.splitlines()
        rule = re.match(r"(?:local)?rule (\w+):", lines[0]).group(1)
        fields, shell = {}, []
        for line in lines[1:]:
            field = re.match(r"^    (\w+): (.*)$", line)
            if shell or line.startswith("Shell command: "):
                if not line.strip() or line.startswith(("[", "Job stats:")):
                    break
                shell.append(line.removeprefix("Shell command: "))
            elif field:
                fields[field.group(1)] = field.group(2)
            elif line.startswith(("[", "Job stats:")):
                break
        wildcards = tuple(tuple(w.split("=", 1)) for w in _paths(fields.get("wildcards", "")))
        jobs.append(Job(rule, _paths(fields.get("input", "")), _paths(fields.get("output", "")), wildcards,
                        "\n".join(shell)))
    return jobs


class Plan:
    def __init__(self, stdout: str):
        self.stdout = stdout
        self.jobs = parse_jobs(stdout)
        total = re.search(r"^total\s+(\d+)$", stdout, flags=re.MULTILINE)
        assert total and int(total.group(1)) == len(self.jobs), "not every planned job was parsed"
        self.producer = {output: job for job in self.jobs for output in job.outputs}

    def needed(self, *targets: str) -> list[Job]:
        """The jobs a dry run of these targets alone would plan (nothing built yet)."""
        seen, order, todo = set(), [], list(targets)
        while todo:
            job = self.producer.get(todo.pop())
            if job is None or id(job) in seen:
                continue
            seen.add(id(job))
            order.append(job)
            todo += job.inputs
        missing = [t for t in targets if t not in self.producer]
        assert not missing, f"no planned job makes {missing}"
        return order

    def rules(self, *targets: str) -> Counter:
        """{rule: jobs} for these targets, as the Job stats table of their own dry run."""
        return Counter(job.rule for job in self.needed(*targets))

    def outputs(self, *targets: str) -> list[str]:
        return [output for job in self.needed(*targets) for output in job.outputs]

    def shell(self, *targets: str) -> str:
        """The shell commands of the jobs these targets need, one per line."""
        return "\n".join(job.shell for job in self.needed(*targets))

    def job(self, output: str) -> Job:
        return self.producer[output]


@functools.cache
def shared_plan() -> Plan:
    """The dry run of PLAN_TARGETS with the shipped config.yaml, in a scratch directory."""
    workdir = Path(tempfile.mkdtemp(prefix="sedsft-plan-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    return Plan(snakemake(workdir, "-n", "-p", *PLAN_TARGETS).stdout)
