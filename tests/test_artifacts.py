"""sedsft.artifacts: the path templates agree with the wildcards the rules use, and the atomic
writers leave only the finished file, with the bytes the stages always wrote."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sedsft import artifacts as A


def test_bare_calls_are_the_rules_templates_and_values_fill_them():
    assert A.graded() == "results/{exp}/eval/{stage}/{bench}.graded.jsonl"
    assert A.graded("rl", "gsm8k", "tiny") == "results/tiny/eval/rl/gsm8k.graded.jsonl"
    assert A.graded().format(exp="tiny", stage="rl", bench="gsm8k") == A.graded("rl", "gsm8k", "tiny")
    assert A.model("base", "tiny") == "results/tiny/base/model"
    assert A.comparison_plot("training", "tiny") == "results/compare/tiny_training.png"


def test_relative_is_the_path_inside_the_experiment_folder():
    assert A.relative(A.train_summary("sft")) == "sft/train.json"
    assert A.relative(A.eval_result()) == "{stage}_eval.json"
    with pytest.raises(ValueError):
        A.relative(A.comparison_table())


def test_writers_leave_the_finished_file_only(tmp_path):
    A.write_json(tmp_path / "a.json", {"b": 1, "when": tmp_path})
    assert (tmp_path / "a.json").read_text() == json.dumps({"b": 1, "when": str(tmp_path)}, indent=2) + "\n"
    A.write_jsonl(tmp_path / "rows.jsonl", ({"i": i} for i in range(3)))
    assert (tmp_path / "rows.jsonl").read_text() == '{"i": 0}\n{"i": 1}\n{"i": 2}\n'
    A.write_text(str(tmp_path / "t.md"), "x\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "rows.jsonl", "t.md"]


def test_a_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "rows.jsonl"
    target.write_text("old\n")

    def rows():
        yield {"i": 0}
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        A.write_jsonl(target, rows())
    assert target.read_text() == "old\n"


def test_replace_folder_swaps_in_the_staged_folder(tmp_path):
    target, staging = tmp_path / "model", A.staging_path(tmp_path / "model")
    (target / "old").mkdir(parents=True)
    staging.mkdir()
    (staging / "weights").write_text("new")
    A.replace_folder(staging, target)
    assert [p.name for p in target.iterdir()] == ["weights"] and not staging.exists()


def test_forgiving_readers(tmp_path):
    (tmp_path / "torn.json").write_text('{"a": ')
    (tmp_path / "log.jsonl").write_text('{"a": 1}\n{"a": \n{"a": 2}\n')
    assert A.read_json_or_none(tmp_path / "torn.json") is None
    assert A.read_json_or_none(tmp_path / "missing.json") is None
    assert A.read_jsonl_lines_that_parse(tmp_path / "log.jsonl") == [{"a": 1}, {"a": 2}]
    assert A.read_jsonl_lines_that_parse(tmp_path / "missing.jsonl") == []


def test_the_module_is_import_light():
    """The Snakefile imports it at DAG-load time (and the GPU check's summary on a broken stack)."""
    code = "import sys, sedsft.artifacts; print(sorted({'torch', 'pandas', 'yaml'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
