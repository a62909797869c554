"""Tests for sedsft.threshold: tau from top-k masses, consistent and upstream calibration."""

from __future__ import annotations

import random

import pytest
import torch

from sedsft.chat import IGNORE_INDEX
from sedsft.config import TinyModelConfig
from sedsft.threshold import calibrate, tau_from_masses
from sedsft.tinymodel import build_model, build_tokenizer

TEXTS = ["Ava has 3 apples and buys 4 more.", "In the boxes: 6 * 7 = 42.", "The answer is \\boxed{37}."]
TINY = TinyModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, vocab_size=400,
                       pretrain_problems=1, pretrain_steps=0, pretrain_batch_size=1, pretrain_learning_rate=1e-3,
                       sft_problems=1, rl_problems=1, test_problems=1, max_operand=2)


# ------------------------------------------------------------------ tau_from_masses


@pytest.mark.parametrize(
    "ratio, expected",
    [
        (0.7, 0.4),  # int(0.7 * 10) = 7 -> sorted[-7] = 0.4: 3 of 10 masses fall below
        (1.0, 0.1),  # sorted[-10]: the smallest, nothing below
        (0.25, 0.9),  # int(2.5) = 2 -> sorted[-2]
        (0.05, 1.0),  # int(0.5) = 0 -> at least one: the largest
    ],
)
def test_tau_from_masses_by_hand(ratio, expected):
    masses = torch.tensor([0.7, 0.2, 1.0, 0.5, 0.1, 0.9, 0.3, 0.6, 0.4, 0.8])  # 0.1 .. 1.0 shuffled
    assert tau_from_masses(masses, ratio) == pytest.approx(expected)


# ------------------------------------------------------------------ a tiny model and hand-made sequences


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # hundreds of tiny forward passes: threads only add overhead (and contend on a busy CI box)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model():
    tokenizer = build_tokenizer(TEXTS, vocab_size=TINY.vocab_size)
    model = build_model(tokenizer, TINY, seed=0)
    # a freshly initialised model is nearly uniform (masses all alike); larger (tied) embeddings
    # give varied distributions, top-k masses spread over about 0.4 .. 0.99 as for a trained base,
    # without saturating at 1.0 where fp32 ties would blur the mask-rate check
    with torch.no_grad():
        torch.manual_seed(0)
        model.get_input_embeddings().weight.normal_(0.0, 0.25)
    return model


def make_sequences(count: int, vocab: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    sequences = [
        # a 3-token prompt, then a 3-token answer: 3 label positions
        ([5, 6, 7, 8, 9, 10], [IGNORE_INDEX] * 3 + [8, 9, 10]),
        # a label at position 0 is never predicted: 2 label positions (indices 2 and 3)
        ([11, 12, 13, 14, 15], [11, IGNORE_INDEX, 13, 14, IGNORE_INDEX]),
    ]
    while len(sequences) < count:
        length = rng.randint(4, 9)
        ids = [rng.randrange(vocab) for _ in range(length)]
        prompt = rng.randint(1, length - 2)
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        if rng.random() < 0.3:
            labels[-1] = IGNORE_INDEX  # a hole at the end
        sequences.append((ids, labels))
    return sequences[:count]


def masses_by_hand(model, sequences, k: int, label_only: bool) -> torch.Tensor:
    """Run the model, softmax in float64, sum of the k largest, at the positions asked for."""
    masses, is_label = every_position_by_hand(model, sequences, (k,))
    return masses[k][is_label] if label_only else masses[k]


def every_position_by_hand(model, sequences, ks: tuple[int, ...]) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
    """Top-k masses at every position for each k, and which positions predict a label."""
    masses, is_label = {k: [] for k in ks}, []
    with torch.no_grad():
        for ids, labels in sequences:
            logits = model(input_ids=torch.tensor([ids])).logits[0].double()  # [T, V]
            ordered = torch.softmax(logits, dim=-1).sort(dim=-1, descending=True).values  # [T, V]
            for t in range(len(ids) - 1):  # position t predicts token t + 1
                is_label.append(labels[t + 1] != IGNORE_INDEX)
                for k in ks:
                    masses[k].append(float(ordered[t, :k].sum()))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in masses.items()}, torch.tensor(is_label)


def tau_by_hand(masses: torch.Tensor, ratio: float) -> float:
    ordered = sorted(masses.tolist())
    return ordered[len(ordered) - max(1, int(ratio * len(ordered)))]


def masked_by_hand(masses: torch.Tensor, tau: float) -> int:
    """How many float64 masses fall below tau, the code's float32 mass of one position (the tau
    element itself, never below itself): that element is recognised by being within float32
    rounding of tau (1e-6; a mass and its float32 twin can differ by ~1e-7 either way, so a
    float64 compare alone would count it on some CPUs and not on others) and is not counted.
    Every other mass must lie clear of tau."""
    near = (masses - tau).abs() <= 1e-6
    assert int(near.sum()) == 1, f"{int(near.sum())} masses within float32 rounding of tau={tau}"
    return int((masses[~near] < tau).sum())


def label_positions(sequences) -> int:
    return sum(label != IGNORE_INDEX for _, labels in sequences for label in labels[1:])


# ------------------------------------------------------------------ consistent mode


def test_consistent_mode_scores_label_positions_only(model):
    sequences = make_sequences(12, model.config.vocab_size)
    out = calibrate(model, sequences, mode="consistent", loss_top_k=2, ratio=0.7, max_sequences=None)
    positions = label_positions(sequences)
    assert label_positions(sequences[:2]) == 3 + 2  # the hand-made ones, counted by hand
    assert out["positions"] == positions < sum(len(ids) - 1 for ids, _ in sequences)
    assert out["sequences"] == 12
    assert out["label_only"] is True and out["mode"] == "consistent"
    assert out["tau_top_k"] == out["loss_top_k"] == 2
    assert out["ratio"] == 0.7


@pytest.mark.parametrize("k, ratio", [(2, 0.7), (1, 0.5), (3, 0.9)])
def test_consistent_tau_equals_an_independent_recomputation(model, k, ratio):
    sequences = make_sequences(10, model.config.vocab_size, seed=1)
    out = calibrate(model, sequences, mode="consistent", loss_top_k=k, ratio=ratio, max_sequences=None)
    masses = masses_by_hand(model, sequences, k, label_only=True)
    assert len(masses) == out["positions"]
    assert len(set(masses.tolist())) == len(masses)  # no ties: the rate bound below is exact
    assert out["tau"] == pytest.approx(tau_by_hand(masses, ratio), rel=1e-5)
    # about (1 - ratio) of the label tokens fall below tau (exactly, up to the int() rounding)
    n = out["positions"]
    assert 1 - ratio - 1e-9 <= out["mask_rate"] <= 1 - ratio + 1 / n + 1e-9
    assert out["mask_rate"] == pytest.approx(masked_by_hand(masses, out["tau"]) / n)
    for q, value in out["mass_quantiles"].items():
        assert value == pytest.approx(float(masses.quantile(q)), rel=1e-5)


def test_consistent_mode_honours_max_sequences(model):
    sequences = make_sequences(10, model.config.vocab_size, seed=2)
    out = calibrate(model, sequences, mode="consistent", loss_top_k=2, ratio=0.7, max_sequences=3)
    assert out["sequences"] == 3
    assert out["positions"] == label_positions(sequences[:3])
    assert out["tau"] == pytest.approx(tau_by_hand(masses_by_hand(model, sequences[:3], 2, True), 0.7), rel=1e-5)


def test_batch_size_does_not_change_the_result(model):
    sequences = make_sequences(9, model.config.vocab_size, seed=3)
    one = calibrate(model, sequences, mode="consistent", loss_top_k=2, ratio=0.7, max_sequences=None, batch_size=1)
    many = calibrate(model, sequences, mode="consistent", loss_top_k=2, ratio=0.7, max_sequences=None, batch_size=4)
    assert one == many


# ------------------------------------------------------------------ upstream mode


def test_upstream_mode_uses_k10_every_position_and_100_sequences(model):
    sequences = make_sequences(105, model.config.vocab_size, seed=4)
    # max_sequences and the loss's top_k do not apply to tau in upstream mode
    out = calibrate(model, sequences, mode="upstream", loss_top_k=2, ratio=0.7, max_sequences=5)
    used = sequences[:100]
    assert out["sequences"] == 100
    assert out["positions"] == sum(len(ids) - 1 for ids, _ in used)
    assert out["tau_top_k"] == 10 and out["loss_top_k"] == 2
    assert out["label_only"] is False and out["mode"] == "upstream"

    masses, is_label = every_position_by_hand(model, used, (10, 2))
    tau_masses = masses[10]
    assert len(tau_masses) == out["positions"]
    assert out["tau"] == pytest.approx(tau_by_hand(tau_masses, 0.7), rel=1e-5)
    # the mask rate is what training sees: the loss's k=2 mass at label positions against that tau
    loss_masses = masses[2][is_label]
    # (a k=2 mass within float32 rounding of tau, 1e-6, may be counted either way)
    masked = round(out["mask_rate"] * len(loss_masses))
    assert int((loss_masses < out["tau"] - 1e-6).sum()) <= masked <= int((loss_masses < out["tau"] + 1e-6).sum())
    # a k=2 mass never exceeds the k=10 mass, so far more than 1 - ratio is masked (the upstream quirk)
    assert out["mask_rate"] > 1 - 0.7 + 0.05


def test_an_unknown_mode_is_refused(model):
    with pytest.raises(ValueError, match="threshold.mode"):
        calibrate(model, make_sequences(2, model.config.vocab_size), mode="faithful", loss_top_k=2, ratio=0.7,
                  max_sequences=None)


# ------------------------------------------------------------------ the CLI stage with a fixed tau


def test_a_fixed_tau_is_written_without_loading_a_model(tmp_path):
    """threshold.tau set: the stage writes it as is (mode "fixed") and never reads the base model
    or the validation data (both paths here do not exist)."""
    import json

    from sedsft import cli
    from sedsft.config import experiment_settings, load_config
    from workflow_helpers import REPO

    settings = experiment_settings(load_config(REPO / "config.yaml"), "tiny", REPO)
    settings["threshold"]["tau"] = 0.625
    settings["sft"]["top_k"] = 3
    code = cli.main(["threshold", "--experiment", "tiny", "--settings", json.dumps(settings),
                     "--base", str(tmp_path / "no-model"), "--val", str(tmp_path / "no-val.parquet"),
                     "--summary", str(tmp_path / "threshold.json")])
    assert code == 0
    written = json.loads((tmp_path / "threshold.json").read_text())
    assert {k: written[k] for k in ("tau", "mode", "loss_top_k")} == {"tau": 0.625, "mode": "fixed", "loss_top_k": 3}
    assert written["provenance"]["stage"] == "threshold"
