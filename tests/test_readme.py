"""The README's commands are the ones CI and users run."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.DOTALL)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_the_readme_test_command():
    main, tests = readme_commands()
    assert "snakemake --cores all results/tiny/rl_eval.json" in main
    assert "pytest" in tests
    assert tests in (REPO / ".ci" / "run").read_text()


def test_torch_is_pinned_before_the_package():
    for command in readme_commands():
        assert command.index("pip install torch==2.13.0") < command.index("pip install -e")
