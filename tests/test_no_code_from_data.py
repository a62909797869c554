"""Nothing from the data is executed: no eval/exec/pickle of anything read, and remote model code
runs only where the config's model.trust_remote_code says so.

Data here is everything a run reads that a user did not write: datasets, benchmark files, model
folders and Hub repos, generations. (Trainer checkpoints in a work dir are the run's own files;
the Trainer, not sedsft, reads them back.) Datasets go through `datasets` 5, which runs no
loading scripts at all; the sentence-embedding model of the semantic diversity loads with
sentence-transformers' default trust_remote_code=False.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from sedsft import config as C
from workflow_helpers import REPO

SOURCES = sorted((REPO / "src" / "sedsft").rglob("*.py"))
FORBIDDEN = {
    "eval(": re.compile(r"(?<![\w.])eval\("),  # model.eval() is a method, not the builtin
    "exec(": re.compile(r"(?<![\w.])exec\("),
    "pickle": re.compile(r"\b(c?pickle|dill|marshal|joblib)\b"),
    "torch.load": re.compile(r"torch\.load\("),
    "yaml.load/unsafe_load": re.compile(r"yaml\.(load|unsafe_load|full_load)\("),
    "trust_remote_code=True": re.compile(r"trust_remote_code\s*[=:]\s*True"),
    "shell=True": re.compile(r"shell\s*=\s*True"),
}


@pytest.mark.parametrize("name", sorted(FORBIDDEN))
def test_no_code_execution_primitive_in_the_package(name):
    assert SOURCES
    hits = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
            for path in SOURCES for number, line in enumerate(path.read_text().splitlines(), 1)
            if FORBIDDEN[name].search(line.split("#", 1)[0])]
    assert not hits, "\n".join(hits)


# calls that can run code shipped with a model: HF loaders and vLLM
LOADERS = {"from_pretrained", "LLM"}


def loader_calls():
    """(where, call, the function it sits in) for every model/tokenizer loader call in src/."""
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for call in ast.walk(function):
                if isinstance(call, ast.Call):
                    name = getattr(call.func, "attr", None) or getattr(call.func, "id", None)
                    if name in LOADERS:
                        yield f"{path.relative_to(REPO)}:{call.lineno}", call, function


def passed_trust_remote_code(call: ast.Call, function) -> ast.expr | None:
    """The expression given as trust_remote_code, directly or through a **kwargs dict literal."""
    for keyword in call.keywords:
        if keyword.arg == "trust_remote_code":
            return keyword.value
        if keyword.arg is None and isinstance(keyword.value, ast.Name):  # **kwargs
            for node in ast.walk(function):
                if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict)
                        and any(isinstance(t, ast.Name) and t.id == keyword.value.id for t in node.targets)):
                    for key, value in zip(node.value.keys, node.value.values):
                        if isinstance(key, ast.Constant) and key.value == "trust_remote_code":
                            return value
    return None


def test_every_model_loader_is_given_trust_remote_code_and_never_true():
    calls = list(loader_calls())
    assert len(calls) >= 5  # threshold, sft, rl, generation (HF and vLLM), the tokenizer loader
    for where, call, function in calls:
        value = passed_trust_remote_code(call, function)
        assert value is not None, f"{where}: {ast.unparse(call)} does not pass trust_remote_code"
        assert not (isinstance(value, ast.Constant) and value.value is True), f"{where}: trust_remote_code=True"
        # from the config, through a parameter or the settings, not a literal
        assert not isinstance(value, ast.Constant), f"{where}: trust_remote_code={ast.unparse(value)}"


def test_the_configs_default_does_not_trust_remote_code():
    assert C.load_config(REPO / "config.yaml")["defaults"]["model"]["trust_remote_code"] is False


# ----------------------------------------------------------------------------- at run time


class Stop(Exception):
    """Raised by the patched model loader: the kwarg has been seen, no need to load or train."""


@pytest.fixture
def loaded(monkeypatch):
    """Records the kwargs of every AutoTokenizer / AutoModelForCausalLM.from_pretrained call;
    tokenizers load for real, a model load stops the stage."""
    import transformers

    calls = []
    real_tokenizer = transformers.AutoTokenizer.from_pretrained

    def tokenizer(path, *args, **kwargs):
        calls.append(("tokenizer", kwargs.get("trust_remote_code", "not passed")))
        return real_tokenizer(path, *args, **kwargs)

    def model(path, *args, **kwargs):
        calls.append(("model", kwargs.get("trust_remote_code", "not passed")))
        raise Stop

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", model)
    return calls


def stage_argv(name: str, trust: bool, tmp_path: Path, model: str) -> list[str]:
    settings = C.experiment_settings(C.load_config(REPO / "config.yaml"), "tiny", REPO)
    settings["model"]["trust_remote_code"] = trust
    settings["threshold"]["tau"] = None
    settings["eval"]["sampling"] = {"n": 1, "temperature": 0.0, "top_p": 1.0}
    system = settings["system_prompt"]
    pd.DataFrame([{"id": "1", "problem": "1 + 1?", "answer": "2"}]).to_parquet(tmp_path / "bench.parquet")
    pd.DataFrame([{"id": "1", "prompt": [{"role": "system", "content": system}, {"role": "user", "content": "1 + 1?"}],
                   "answer": "2"}]).to_parquet(tmp_path / "prompts.parquet")
    pd.DataFrame([{"row": 0, "input_ids": [1, 2, 3], "labels": [-100, 2, 3]}]).to_parquet(tmp_path / "seq.parquet")
    settings["data"]["sft"].update(train_rows=3, val_rows=3)
    (tmp_path / "sft.jsonl").write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"\\boxed{{{i + 1}}}"})
                                                + "\n" for i in range(6)))
    out = tmp_path / "out"
    args = {
        "sft-data": ["--source", tmp_path / "sft.jsonl", "--tokenizer", model, "--train-out", out / "t.parquet",
                     "--val-out", out / "v.parquet"],
        "threshold": ["--base", model, "--val", tmp_path / "seq.parquet"],
        "sft": ["--base", model, "--train", tmp_path / "seq.parquet", "--threshold", tmp_path / "tau.json",
                "--out-dir", out / "sft", "--work-dir", out / "ckpt"],
        "rl": ["--model", model, "--prompts", tmp_path / "prompts.parquet", "--out-dir", out / "rl",
               "--work-dir", out / "rl_ckpt"],
        "generate": ["--model", model, "--benchmark", tmp_path / "bench.parquet", "--out", out / "gen.jsonl"],
    }[name]
    (tmp_path / "tau.json").write_text(json.dumps({"tau": 0.5}))
    out.mkdir(exist_ok=True)
    return [name, "--experiment", "tiny", "--settings", json.dumps(settings), *map(str, args),
            "--summary", str(out / "summary.json")]


@pytest.mark.parametrize("trust", [False, True])
@pytest.mark.parametrize("stage, loads", [
    ("sft-data", ["tokenizer"]),
    ("threshold", ["model"]),
    ("sft", ["tokenizer", "model"]),
    ("rl", ["tokenizer", "model"]),
    ("generate", ["tokenizer", "model"]),
])
def test_the_configs_trust_remote_code_reaches_transformers(stage, loads, trust, loaded, tmp_path, tiny_model):
    from sedsft.cli import main

    try:
        main(stage_argv(stage, trust, tmp_path, tiny_model))
    except Stop:
        pass
    assert loaded == [(kind, trust) for kind in loads]
