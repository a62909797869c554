"""Fixtures shared by several test files."""

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
def micro_clone(tmp_path_factory):
    """A fresh `git clone` of the repository in an empty folder (see tests/micro_run.py)."""
    from workflow_helpers import fresh_clone

    return fresh_clone(tmp_path_factory.mktemp("fresh"))


@pytest.fixture(scope="session")
def micro_run(micro_clone, tmp_path_factory):
    """The micro experiment's whole DAG, run once in the fresh clone; the slow tests that read it
    treat it as read-only (tests/micro_run.py)."""
    from micro_run import run_micro

    run = run_micro(micro_clone, tmp_path_factory.mktemp("overlay"))
    print(f"micro DAG: {run.seconds:.0f} s")
    return run
