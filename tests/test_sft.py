"""SFT telemetry: what `sedsft sft --metrics` writes to sft/metrics.jsonl per logging step (the
CE part of the loss, SED's extra term, its mask rate, token accuracy, entropy), recomputed by hand
from the base model for the first step and checked against the logged loss for every step, for
SED and for its CE twin, on the one-layer test model (seconds)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from sedsft import cli
from sedsft import config as C
from sedsft.chat import IGNORE_INDEX, load_tokenizer, tokenize_conversation
from workflow_helpers import REPO

STEPS = 3
QUESTIONS = [f"What is {a} + {b}?" for a, b in ((1, 2), (3, 4), (2, 2), (5, 1), (0, 3), (4, 4), (1, 1), (2, 3))]


def conversations() -> list[list[dict]]:
    return [[{"role": "system", "content": "Box the answer."}, {"role": "user", "content": q},
             {"role": "assistant", "content": f"The answer is \\boxed{{{sum(int(c) for c in q if c.isdigit())}}}."}]
            for q in QUESTIONS]


def label_statistics(model_dir: str, sequences, tau: float | None, sed_lambda: float = 1.0) -> dict:
    """Per label token of every sequence, with the model's own weights, one sequence at a time
    (no padding): the metrics.jsonl fields as README defines them, averaged over label tokens."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    rows = []
    with torch.no_grad():
        for ids, labels in sequences:
            logits = model(input_ids=torch.tensor([ids])).logits[0, :-1].double()
            targets = torch.tensor(labels[1:])
            keep = targets != IGNORE_INDEX
            logp = torch.log_softmax(logits[keep], -1)
            y = targets[keep]
            p_y = logp.gather(-1, y[:, None]).squeeze(-1).exp()
            mass = logp.exp().topk(2, -1).values.sum(-1)
            rows.append({"ce": -p_y.log(), "p_y": p_y, "mass": mass, "correct": logp.argmax(-1) == y,
                         "entropy": -(logp.exp() * logp).sum(-1)})
    cat = {key: torch.cat([r[key] for r in rows]) for key in rows[0]}
    masked = cat["mass"] < tau if tau is not None else torch.zeros_like(cat["mass"], dtype=torch.bool)
    return {"tokens": len(cat["ce"]), "masses": cat["mass"], "ce": float(cat["ce"].mean()),
            "extra": float((sed_lambda * masked * (cat["p_y"] - 0.5) ** 2).mean()),
            "mask_rate": float(masked.double().mean()), "token_accuracy": float(cat["correct"].double().mean()),
            "entropy": float(cat["entropy"].mean())}


def clear_tau(masses: torch.Tensor, share: float = 0.3) -> float:
    """A tau with about `share` of the masses below it, halfway between two neighbours that are
    well apart: no mass lies within float rounding of it, so the mask is the same computed any way."""
    ordered = masses.sort().values.tolist()
    start = int(share * len(ordered))
    for i in [*range(start, len(ordered) - 1), *range(start - 1, 0, -1)]:
        if ordered[i + 1] - ordered[i] > 1e-6:  # float32 rounds these masses (~0.01) to ~1e-9
            return (ordered[i] + ordered[i + 1]) / 2
    raise AssertionError("no gap between the masses")


@pytest.fixture(scope="module")
def data(tiny_model, tmp_path_factory):
    """(folder, sequences, tau): the SFT train file of eight conversations and a clear tau."""
    folder = tmp_path_factory.mktemp("sft")
    tokenizer = load_tokenizer(tiny_model)
    sequences = [tokenize_conversation(tokenizer, messages) for messages in conversations()]
    pd.DataFrame([{"input_ids": ids, "labels": labels} for ids, labels in sequences]).to_parquet(
        folder / "train.parquet", index=False)
    tau = clear_tau(label_statistics(tiny_model, sequences, None)["masses"])
    (folder / "threshold.json").write_text(json.dumps({"tau": tau}))
    return folder, sequences, tau


def train(tiny_model, folder, loss: str) -> tuple[list[dict], dict]:
    """`sedsft sft` as the sft rule runs it: (metrics.jsonl lines, train.json)."""
    settings = C.experiment_settings(C.load_config(REPO / "config.yaml"), "tiny", REPO)
    # one batch of all eight sequences per step, a log line per step
    settings["sft"].update(loss=loss, max_steps=STEPS, per_device_batch_size=len(QUESTIONS),
                           gradient_accumulation_steps=1, logging_steps=1, learning_rate=3e-3, warmup_ratio=0.0,
                           save_steps=100, gradient_checkpointing=False, loss_impl="auto", sed_lambda=1.0, top_k=2)
    out = folder / loss
    code = cli.main(["sft", "--experiment", "tiny", "--settings", json.dumps(settings), "--base", tiny_model,
                     "--train", str(folder / "train.parquet"), "--threshold", str(folder / "threshold.json"),
                     "--out-dir", str(out / "model"), "--work-dir", str(out / "checkpoints"),
                     "--metrics", str(out / "metrics.jsonl"), "--summary", str(out / "train.json")])
    assert code == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return lines, json.loads((out / "train.json").read_text())


@pytest.fixture(scope="module")
def runs(tiny_model, data):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a one-layer model: threads only contend
    try:
        return {loss: train(tiny_model, data[0], loss) for loss in ("sed", "ce")}
    finally:
        torch.set_num_threads(threads)


def steps(lines: list[dict]) -> list[dict]:
    return [line for line in lines if "loss" in line]


@pytest.mark.parametrize("loss", ["sed", "ce"])
def test_metrics_jsonl_has_every_step_and_the_closing_summary(runs, loss):
    lines, summary = runs[loss]
    assert [line["step"] for line in steps(lines)] == list(range(1, STEPS + 1))
    assert "train_runtime" in lines[-1] and "loss" not in lines[-1]  # the Trainer's closing summary
    assert lines == summary["log_history"] and summary["loss"] == loss
    for line in steps(lines):
        assert {"ce", "extra", "mask_rate", "entropy", "token_accuracy", "tokens_per_s", "grad_norm"} <= set(line)
        assert line["tokens_per_s"] > 0 and line["entropy"] > 0 and 0 <= line["token_accuracy"] <= 1


def test_the_first_step_of_sed_is_the_base_models_telemetry(tiny_model, runs, data):
    """Step 1 is computed with the base weights on the whole train set: ce, extra, mask rate,
    entropy and token accuracy recomputed from the base model by hand; about 30 % of the label
    tokens are masked (tau was chosen so) and the extra term is positive."""
    folder, sequences, tau = data
    want = label_statistics(tiny_model, sequences, tau)
    first = steps(runs["sed"][0])[0]
    assert 0.2 < want["mask_rate"] < 0.4 and want["extra"] > 0
    assert first["mask_rate"] == pytest.approx(want["mask_rate"], abs=1e-9)
    for key in ("ce", "extra", "entropy", "token_accuracy"):
        assert first[key] == pytest.approx(want[key], rel=1e-4, abs=1e-7), key
    assert runs["sed"][1]["tau"] == pytest.approx(tau)


@pytest.mark.parametrize("loss", ["sed", "ce"])
def test_every_logged_loss_is_its_ce_plus_its_extra_term(runs, loss):
    """One batch per step and a log line per step: the logged loss is exactly ce + extra (the
    SED penalty, weight sed_lambda = 1, included in extra); the CE twin has no extra term and
    masks nothing, SED masks some tokens at every step."""
    for line in steps(runs[loss][0]):
        assert line["loss"] == pytest.approx(line["ce"] + line["extra"], abs=2e-4)
        if loss == "ce":
            assert line["extra"] == 0 and line["mask_rate"] == 0
        else:
            assert line["extra"] > 0 and 0 < line["mask_rate"] < 1
            assert line["extra"] <= 0.25 * line["mask_rate"] + 1e-9  # (p_y - 1/2)^2 <= 1/4 on masked tokens


def test_the_ce_twin_starts_from_the_same_cross_entropy(runs, data):
    """Same base model, same data, same first batch: the same ce, token accuracy and entropy at
    step 1, but not the same gradient (SED's extra term has one), so the trained models differ."""
    from transformers import AutoModelForCausalLM

    sed, ce = steps(runs["sed"][0]), steps(runs["ce"][0])
    for key in ("ce", "token_accuracy", "entropy"):
        assert sed[0][key] == pytest.approx(ce[0][key], rel=1e-6), key
    assert sed[0]["grad_norm"] != pytest.approx(ce[0]["grad_norm"], rel=1e-5)
    assert all(line["ce"] < ce[0]["ce"] for line in ce[1:])  # CE learns
    models = [AutoModelForCausalLM.from_pretrained(data[0] / loss / "model").state_dict() for loss in ("sed", "ce")]
    assert any(not torch.equal(models[0][k], models[1][k]) for k in models[0])
