"""The stage names are defined once (sedsft.stages): every rule is a registered stage and calls
that stage's command, every stage module has the command the registry promises, and the other
lists of stages (settings sections, GPU stages, the GPU check's timing order) spell the same names."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import re

import pytest

from sedsft import cli, config, launch
from sedsft.stages import STAGES, command
from workflow_helpers import REPO

RULE = re.compile(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", re.S | re.M)


def rules() -> dict[str, str]:
    """rule name -> its body, over workflow/rules/*.smk."""
    found = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        found.update(dict(RULE.findall(smk.read_text())))
    return found


def test_every_rule_is_a_stage_and_runs_its_command():
    bodies = rules()
    assert sorted(bodies) == sorted(STAGES)
    for name, body in bodies.items():
        assert re.search(rf'"(sedsft|{{params\.launcher}}) {command(name)} --experiment', body), name


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_module_has_its_command(name):
    module = importlib.import_module(STAGES[name].module)
    parser = argparse.ArgumentParser()
    getattr(module, f"{name}_arguments")(parser)
    assert callable(getattr(module, f"run_{name}"))
    flags = [a for a in parser._actions if a.option_strings != ["-h", "--help"]]
    assert flags and all(a.help for a in flags), name  # every flag says what file it is


def test_the_other_lists_of_stages_use_the_registry():
    assert set(config.STAGE_SECTIONS) <= set(STAGES)
    assert set(launch.GPU_STAGES) <= set(STAGES)
    assert set(cli.STAGES) == {command(name) for name in STAGES}
    spec = importlib.util.spec_from_file_location("gpu_check_summary", REPO / "scripts" / "gpu_check_summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    # per-rule timings: <rule>, or <rule>_<sft|rl> for the rules run on a model
    assert {re.sub(r"_(sft|rl)$", "", s) if s not in STAGES else s for s in summary.STAGE_ORDER} <= set(STAGES)
