"""Fixtures shared by several test files, and the order files are handed to pytest-xdist workers."""

import os

import pytest


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A randomly initialised one-layer Llama with its own byte-level tokenizer, as an HF folder."""
    from sedsft.config import TinyModelConfig
    from sedsft.tinymodel import build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("model")
    tokenizer = build_tokenizer(["What is 1 + 2? The answer is \\boxed{3}."] * 20, vocab_size=300)
    cfg = TinyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=300,
                          pretrain_problems=1, pretrain_steps=0, pretrain_batch_size=1,
                          pretrain_learning_rate=1e-3, sft_problems=1, rl_problems=1, test_problems=1,
                          max_operand=2)
    build_model(tokenizer, cfg, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def micro_run(tmp_path_factory):
    """The micro experiment's whole DAG, run once per test session in a fresh clone; the tests
    that read it treat it as read-only (tests/micro_run.py). Under pytest-xdist the workers share
    it: the first to ask runs it (the others wait on the lock), the rest read where it is."""
    from filelock import FileLock

    from micro_run import shared_micro_run

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # popen-gwN's parent: this run's
    with FileLock(str(shared / "micro_run.lock")):
        run = shared_micro_run(shared / "micro_run")
    print(f"micro DAG: {run.seconds:.0f} s")
    return run


# pytest-xdist (pyproject's addopts) hands out whole test files, longest first; the two files that
# read the session's micro run first go together, as one unit, to one worker; the Slurm file,
# which reads it once more at the end of a two-minute submission, and the seeds file, which runs
# four seed runs beside a copy of it, go last (to the worker that frees first: by then the run is
# on disk, or that worker waits for it on the lock).
MICRO_READERS = ("tests/test_workflow_e2e.py", "tests/test_reliability.py")
FIRST = ("micro", "tests/test_deepspeed_cpu.py", "tests/test_rl.py")
LAST = ("tests/test_seeds_e2e.py", "tests/test_slurm_cluster.py")


def work_unit(nodeid: str) -> str:
    path = nodeid.split("::", 1)[0]
    return "micro" if path in MICRO_READERS else path


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadFileScheduling

    class ByWorkUnit(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        unit = work_unit(item.nodeid)
        return FIRST.index(unit) if unit in FIRST else len(FIRST) + (unit in LAST)

    items.sort(key=rank)  # stable: each file keeps its own order
