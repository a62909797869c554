# Helpers of the workflow/rules/*.smk files (kept here, apart from the rules, as `--lint` wants):
# config validation, experiment lookup, stage settings, inputs, and the resources jobs ask for.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from sedsft import artifacts
from sedsft import config as C
from sedsft.launch import command_prefix, job_gpus, rl_command_prefix

REPO = Path(workflow.basedir)
# conda users get the same pinned stack the package declares (tests check they agree)
CONDA_ENV = str(REPO / "envs" / f"{config.get('conda_env', 'cpu')}.yaml")

try:
    C.validate(config, C.load_schema(REPO), "config")
    C.check_experiment_names(config, "config")
    C.check_comparisons(config, "config")
except C.ConfigError as error:
    raise WorkflowError(str(error)) from None


wildcard_constraints:
    exp="[A-Za-z0-9][A-Za-z0-9_.-]*",
    stage="sft|rl",
    bench="[a-z0-9_]+",


_EXPERIMENTS = {}  # name -> (merged settings, the typed Experiment)


def _loaded(exp):
    """An unknown name or a bad value stops the run here, before any job."""
    if exp not in _EXPERIMENTS:
        try:
            settings = C.experiment_settings(config, exp, REPO)
            _EXPERIMENTS[exp] = settings, C.parse_experiment(settings, exp)
        except C.ConfigError as error:
            raise WorkflowError(str(error)) from None
    return _EXPERIMENTS[exp]


def experiment(exp):
    """The experiment's merged settings as plain data: what the stages receive (their slice,
    as params) and what decides re-runs."""
    return _loaded(exp)[0]


def typed(exp):
    """The same experiment typed (sedsft.config.Experiment): what the helpers here read."""
    return _loaded(exp)[1]


def is_tiny(exp):
    return typed(exp).is_tiny


def builds_base_model(exp):
    """The base model is made by the workflow (tiny: built and pretrained; gguf: converted)."""
    return typed(exp).model.built_locally


def stage_json(stage):
    """params: the stage's settings, so that editing them (and only them) re-runs the stage."""
    return lambda w: json.dumps(C.stage_settings(experiment(w.exp), stage), sort_keys=True)


def owner(exp, stage):
    """The experiment whose artifact of `stage` this one reuses: the farthest ancestor along
    `extends` (a seed run's ancestor is its experiment) with the same settings for that stage and
    the stages it reads: tiny_ce trains on tiny's base model and data, tiny.seed43 on tiny's too."""
    settings = C.reuse_settings(experiment(exp), stage)
    parent = C.parent_of(config, exp)
    while parent and C.reuse_settings(experiment(parent), stage) == settings:
        exp, parent = parent, C.parent_of(config, parent)
    return exp


def sft_data_file(split):
    return lambda w: artifacts.sft_data(split, owner(w.exp, "sft_data"))


def rl_prompts_file(w):
    return artifacts.rl_prompts(owner(w.exp, "rl_prompts"))


def bench_problems_file(w):
    return artifacts.bench_problems(w.bench, owner(w.exp, "benchmark_data"))


def bench_summaries(w):
    return [artifacts.bench_summary(bench, owner(w.exp, "benchmark_data")) for bench in benchmarks(w.exp)]


def tiny_task_file(exp, split):
    return artifacts.tiny_task_file(split, owner(exp, "tiny_task"))


def base_model(w):
    """The base model: the one the workflow built (tiny, gguf), or a Hub id / local folder."""
    if builds_base_model(w.exp):
        return artifacts.model("base", owner(w.exp, "base_model"))
    return typed(w.exp).model.path


def base_model_input(w):
    return [base_model(w)] if builds_base_model(w.exp) else []


def tiny_task_inputs(w):
    """What building the base model reads: the tiny task's files (a GGUF model needs none)."""
    if not is_tiny(w.exp):
        return {}
    return {"pretrain": tiny_task_file(w.exp, "pretrain"), "sft": tiny_task_file(w.exp, "sft")}


def data_source(w, section):
    """A data source: the tiny task's file, a local file (tracked as input), or a Hub id."""
    source = getattr(typed(w.exp).data, section).source
    return tiny_task_file(w.exp, section) if source == "tiny" else source


def data_source_input(section):
    def inputs(w):
        source = data_source(w, section)
        return [source] if Path(source).exists() or source.startswith(f"{artifacts.RESULTS}/") else []

    return inputs


# across_nodes: under a Slurm job of several nodes, one torchrun per node (sedsft.launch)
def sft_launcher(w):
    sft = typed(w.exp).sft
    return command_prefix(sft.num_processes, sft.deepspeed, across_nodes=True)


def rl_launcher(w, input):
    settings = experiment(w.exp)
    return rl_command_prefix(
        settings["rl"], input.model, across_nodes=True, trust_remote_code=settings["model"]["trust_remote_code"]
    )


def benchmarks(exp):
    return typed(exp).eval_benchmarks()


# ----------------------------------------------------------------------------- the model of a stage
# {stage} of diversity and evaluation: sft, rl, or base (the base model itself: the folder the
# workflow built for tiny/gguf, else model.path, which may be a Hub id and so no input file).


def stage_model(w):
    return base_model(w) if w.stage == "base" else artifacts.model(w.stage, w.exp)


def stage_model_input(w):
    return base_model_input(w) if w.stage == "base" else [artifacts.model(w.stage, w.exp)]


# ----------------------------------------------------------------------------- diversity inputs


def diversity_prompts_input(w):
    sources = typed(w.exp).diversity.sources
    return [rl_prompts_file(w)] if "rl" in sources else []


def diversity_benchmarks_input(w):
    exp = owner(w.exp, "benchmark_data")
    return [artifacts.bench_problems(b, exp) for b in C.diversity_benchmarks(experiment(w.exp))]


# ----------------------------------------------------------------------------- evaluation inputs


def eval_inputs(template):
    """The artifact template (with {exp}, {stage} and {bench}) for every benchmark the experiment evaluates."""

    def inputs(w):
        return [template.format(exp=w.exp, stage=w.stage, bench=bench) for bench in benchmarks(w.exp)]

    return inputs


# ----------------------------------------------------------------------------- seeds


def seed_runs(exp):
    """seed -> the run of `exp` under it (results/{exp}/ or results/{exp}.seed{N}/)."""
    try:
        return C.seed_runs(exp, experiment(exp))
    except C.ConfigError as error:
        raise WorkflowError(str(error)) from None


def seed_run_inputs(path_of_run):
    return lambda w: [path_of_run(run) for run in seed_runs(w.exp).values()]


def seeds_json(w):
    """params: the experiment and its seed runs (a seed added or removed re-runs the aggregate)."""
    return json.dumps({"experiment": w.exp, "runs": seed_runs(w.exp)}, sort_keys=True)


# ----------------------------------------------------------------------------- comparisons
# results/compare/{name}.md: the experiments config `comparisons` lists under the name.


def comparison(name):
    """The comparison's experiments, the first (the reference of the delta rows) first."""
    try:
        return C.comparison_experiments(config, name)
    except C.ConfigError as error:
        raise WorkflowError(str(error)) from None


def comparison_inputs(template):
    return lambda w: [template.format(exp=exp) for exp in comparison(w.name)]


def comparison_seed_inputs(path_of_run):
    """path_of_run(run) for every seed run of every compared experiment."""
    return lambda w: [path_of_run(run) for exp in comparison(w.name) for run in seed_runs(exp).values()]


def comparison_graded_inputs(w):
    """The graded files of every seed run (the problem-level tests read every sample)."""
    return [
        artifacts.graded(stage, bench, run)
        for exp in comparison(w.name)
        for run in seed_runs(exp).values()
        for stage in ("sft", "rl")
        for bench in benchmarks(exp)
    ]


def comparison_json(w):
    """params: the compared experiments, their settings and seed runs (a changed one re-runs the comparison)."""
    experiments = comparison(w.name)
    return json.dumps(
        {
            "comparison": w.name,
            "experiments": experiments,
            "settings": {exp: experiment(exp) for exp in experiments},
            "seed_runs": {exp: seed_runs(exp) for exp in experiments},
        },
        sort_keys=True,
    )


def compare_report(path, figure):
    """An output embedded by `snakemake --report`, grouped by comparison."""
    return report(
        path,
        caption="../report/compare.rst",
        category="comparisons",
        subcategory="{name}",
        labels={"comparison": "{name}", "figure": figure},
    )


# ----------------------------------------------------------------------------- resources
# What each job asks the scheduler for (Slurm: --gpus, --cpus-per-task, --mem, -t). GPU counts
# follow from the experiment's settings, memory and wall time from its scale (tiny or a real
# model); a profile's set-resources overrides them per rule (profiles/slurm/config.v8+.yaml).

# rule -> (mem_mb, runtime in minutes) for a tiny experiment, and for a real (3B/7B) model
SIZES = {
    "tiny_task": ((2000, 10), (2000, 10)),
    "base_model": ((4000, 30), (4000, 30)),
    "sft_data": ((4000, 20), (32000, 120)),
    "rl_prompts": ((2000, 10), (16000, 60)),
    "benchmark_data": ((2000, 10), (8000, 30)),
    "threshold": ((4000, 20), (64000, 120)),
    "sft": ((8000, 60), (256000, 1440)),
    "diversity": ((4000, 30), (64000, 360)),
    "rl": ((8000, 60), (256000, 2880)),
    "generate": ((4000, 30), (64000, 480)),
    "grade": ((4000, 20), (16000, 120)),
    "eval_report": ((2000, 10), (8000, 30)),
    "seeds": ((2000, 10), (4000, 10)),
}


def uses_gpus(exp):
    """resources.gpus of the experiment: auto = GPUs for a Hub/local model, none for a tiny one."""
    wanted = experiment(exp)["resources"]["gpus"]
    return not is_tiny(exp) if wanted == "auto" else wanted


def gpus(stage):
    """resources.gpu: the GPUs one job of the stage uses (0 when the experiment runs on CPUs);
    the stage's command gets the same count (--gpus) and sees only those (sedsft.launch.pin_gpus)."""
    return lambda w: job_gpus(stage, experiment(w.exp), uses_gpus(w.exp))


def cpus(stage, base):
    """threads (Slurm --cpus-per-task): `base`, and at least resources.cpus_per_gpu per GPU the job uses."""
    count = gpus(stage)
    return lambda w: max(base, experiment(w.exp)["resources"]["cpus_per_gpu"] * count(w))


def tracker(w):
    """Where a training stage's curves go (config `tracker`). A resource, not a param: Snakemake
    re-runs a job whose params changed (persistence `params` trigger), and switching from
    TensorBoard to W&B changes how a run is watched, not what it computes."""
    return experiment(w.exp)["tracker"]


def mem_mb(rule):
    return lambda w: SIZES[rule][0 if is_tiny(w.exp) else 1][0]


def runtime(rule):
    return lambda w: SIZES[rule][0 if is_tiny(w.exp) else 1][1]
