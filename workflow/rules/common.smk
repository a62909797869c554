# Helpers shared by every rule file: config validation, experiment lookup, stage settings.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from sedsft import config as C
from sedsft.launch import command_prefix, rl_command_prefix

REPO = Path(workflow.basedir)
# conda users get the same pinned stack the package declares (tests check they agree)
CONDA_ENV = str(REPO / "envs" / f"{config.get('conda_env', 'cpu')}.yaml")

try:
    C.validate(config, C.load_schema(REPO), "config")
except C.ConfigError as error:
    raise WorkflowError(str(error)) from None


wildcard_constraints:
    exp="[A-Za-z0-9][A-Za-z0-9_.-]*",
    stage="sft|rl",
    bench="[a-z0-9_]+",


_EXPERIMENTS = {}


def experiment(exp):
    """The experiment's merged settings; an unknown name or a bad value stops the run here."""
    if exp not in _EXPERIMENTS:
        try:
            settings = C.experiment_settings(config, exp, REPO)
            C.parse_experiment(settings, exp)
        except C.ConfigError as error:
            raise WorkflowError(str(error)) from None
        _EXPERIMENTS[exp] = settings
    return _EXPERIMENTS[exp]


def is_tiny(exp):
    return experiment(exp)["model"]["tiny"] is not None


def stage_json(stage):
    """params: the stage's settings, so that editing them (and only them) re-runs the stage."""
    return lambda w: json.dumps(C.stage_settings(experiment(w.exp), stage), sort_keys=True)


def base_model(w):
    """The base model: the locally built tiny model, or a Hub id / local folder."""
    return f"results/{w.exp}/base/model" if is_tiny(w.exp) else experiment(w.exp)["model"]["path"]


def base_model_input(w):
    return [f"results/{w.exp}/base/model"] if is_tiny(w.exp) else []


def data_source(w, section):
    """A data source: the tiny task's file, a local file (tracked as input), or a Hub id."""
    source = experiment(w.exp)["data"][section]["source"]
    if source == "tiny":
        return f"results/{w.exp}/data/tiny/{section}.jsonl"
    return source


def data_source_input(section):
    def inputs(w):
        source = data_source(w, section)
        return [source] if Path(source).exists() or source.startswith("results/") else []

    return inputs


def sft_launcher(w):
    sft = experiment(w.exp)["sft"]
    return command_prefix(sft["num_processes"], sft["deepspeed"])


def rl_launcher(w, input):
    return rl_command_prefix(experiment(w.exp)["rl"], input.model)


def benchmarks(exp):
    settings = experiment(exp)
    return list(settings["eval"]["benchmarks"]) + (["tiny"] if is_tiny(exp) else [])
