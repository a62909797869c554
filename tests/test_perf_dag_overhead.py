"""perf/dag_overhead.py: reading a run's timing files and logs, and what it imports."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "perf" / "dag_overhead.py"
spec = importlib.util.spec_from_file_location("dag_overhead", SCRIPT)
overhead = importlib.util.module_from_spec(spec)
spec.loader.exec_module(overhead)


def test_jobs_are_read_with_their_stage_and_in_stage_time(tmp_path):
    (tmp_path / "timings").mkdir()
    (tmp_path / "logs").mkdir()
    for stem, wall, done in [("generate_sft_gsm8k", 13.2, 9.5), ("grade_rl_tiny", 4.0, None), ("rl_prompts", 3.0, 1.0)]:
        (tmp_path / "timings" / f"{stem}.tsv").write_text(f"s\th:m:s\n{wall}\t0:00:13\n")
        if done is not None:
            (tmp_path / "logs" / f"{stem}.log").write_text(f"x sedsft INFO {stem.split('_')[0]} done in {done} s -> y\n")
    rows = {r["job"]: r for r in overhead.job_rows(tmp_path)}
    assert rows["generate_sft_gsm8k"] == {"job": "generate_sft_gsm8k", "stage": "generate", "wall_s": 13.2,
                                          "in_stage_s": 9.5}
    assert rows["grade_rl_tiny"]["stage"] == "grade" and rows["grade_rl_tiny"]["in_stage_s"] is None
    assert rows["rl_prompts"]["stage"] == "rl_prompts"  # not "rl"


def test_import_lines_and_every_stage_is_known():
    assert overhead.import_line("transformers.Trainer") == "from transformers import Trainer"
    assert overhead.import_line("scipy.stats") == "import scipy.stats"
    assert overhead.import_line("torch") == "import torch"
    from sedsft.stages import STAGES

    assert set(STAGES) == set(overhead.STAGE_IMPORTS)
