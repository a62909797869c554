"""Tests for sedsft.losses against the float64 references of tests/loss_references.py, written
from the formulas (the classes' docstrings in sedsft.loss_registry; the paper: Chen, Liu, Meng
2026), forward and gradient, fp32 and bf16 inputs."""

from __future__ import annotations

import math

import pytest
import torch

from loss_references import CASES, case_settings, reference_per_token_f64
from sedsft.loss_registry import loss_named
from sedsft.losses import LossSettings, causal_lm_loss, token_losses, top_k_mass

B, T, V = 3, 7, 11
IGNORE = -100


# ------------------------------------------------------------------ the reference


def reference_batch_loss(logits: torch.Tensor, labels: torch.Tensor, s: LossSettings,
                         num_items: int | None = None) -> torch.Tensor:
    """Position t predicts labels[t + 1]; -100 is skipped; sum / (label tokens or num_items)."""
    rows, targets = [], []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            y = int(labels[b, t + 1])
            if y == IGNORE:
                continue
            rows.append(logits[b, t])
            targets.append(y)
    total = (reference_per_token_f64(torch.stack(rows), torch.tensor(targets), s).sum() if rows
             else torch.zeros((), dtype=torch.float64))
    return total / (num_items if num_items is not None else max(len(rows), 1))


def reference_masses(logits: torch.Tensor, labels: torch.Tensor, k: int) -> list[float]:
    """Top-k mass (float64) at every position that predicts a label."""
    out = []
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1] - 1):
            if int(labels[b, t + 1]) != IGNORE:
                out.append(sum(sorted(torch.softmax(logits[b, t].double(), -1).tolist(), reverse=True)[:k]))
    return out


# ------------------------------------------------------------------ shared data


def make_batch(seed: int = 0, batch: int = B) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits exactly representable in bf16 (so fp32 and bf16 runs see the same numbers) and
    labels with ignored positions, including a fully prompt-only start and a label at t = 0."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(batch, T, V, generator=g) * 2.0).bfloat16().float()  # [B, T, V]
    labels = torch.randint(0, V, (batch, T), generator=g)  # [B, T]
    labels[:, :2] = IGNORE  # the prompt
    labels[0, 4] = IGNORE  # a hole inside the answer
    labels[1, 0] = 3  # position 0 is never predicted: must not count
    if batch > 2:
        labels[2, -1] = IGNORE
    return logits, labels


def midpoint_tau(logits, labels, k: int) -> float:
    """A tau between two label-position masses, far from both (fp32 vs fp64 cannot flip a mask)."""
    masses = sorted(reference_masses(logits, labels, k))
    # the widest gap with at least two masses on each side
    j = max(range(2, len(masses) - 1), key=lambda j: masses[j] - masses[j - 1])
    assert masses[j] - masses[j - 1] > 1e-3
    return (masses[j] + masses[j - 1]) / 2


LOGITS, LABELS = make_batch()
TAU = midpoint_tau(LOGITS, LABELS, 2)

SETTINGS = {case: case_settings(case, lambda k: midpoint_tau(LOGITS, LABELS, k)) for case in CASES}


def test_the_batch_exercises_masking_both_ways():
    masses = reference_masses(LOGITS, LABELS, 2)
    below = sum(m < TAU for m in masses)
    assert 0 < below < len(masses)


def module_and_reference(logits_in: torch.Tensor, labels, s: LossSettings, num_items=None):
    leaf = logits_in.clone().requires_grad_(True)
    loss, stats = causal_lm_loss(leaf, labels, s, num_items_in_batch=num_items)
    loss.backward()
    ref_leaf = logits_in.detach().double().requires_grad_(True)
    ref = reference_batch_loss(ref_leaf, labels, s, num_items)
    ref.backward()
    return loss, leaf.grad, ref, ref_leaf.grad, stats


# ------------------------------------------------------------------ against the reference


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_causal_lm_loss_matches_the_reference_fp32(name):
    loss, grad, ref, ref_grad, _ = module_and_reference(LOGITS, LABELS, SETTINGS[name])
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_causal_lm_loss_matches_the_reference_bf16(name):
    loss, grad, ref, ref_grad, _ = module_and_reference(LOGITS.bfloat16(), LABELS, SETTINGS[name])
    # the loss is computed in fp32 even from bf16 logits; the gradient comes back in bf16
    assert loss.dtype == torch.float32 and grad.dtype == torch.bfloat16
    assert loss.item() == pytest.approx(ref.item(), rel=1e-4, abs=1e-5)
    torch.testing.assert_close(grad.double(), ref_grad, rtol=2e-2, atol=2e-3)


def test_the_losses_really_differ():
    # guards the comparisons above against a reference that ignores its settings
    values = {name: reference_batch_loss(LOGITS.double(), LABELS, s).item() for name, s in SETTINGS.items()}
    assert len({round(v, 6) for v in values.values()}) == len(values), values


def test_stats_count_tokens_and_masked_positions():
    s = SETTINGS["sed"]
    _, stats = causal_lm_loss(LOGITS, LABELS, s)
    masses = reference_masses(LOGITS, LABELS, s.top_k)
    expected_tokens = int((LABELS[:, 1:] != IGNORE).sum())
    assert int(stats["tokens"]) == expected_tokens == len(masses)
    assert int(stats["masked"]) == sum(m < s.tau for m in masses)
    ce_only = reference_batch_loss(LOGITS.double(), LABELS, LossSettings("ce")).item() * expected_tokens
    assert float(stats["ce_sum"]) == pytest.approx(ce_only, rel=1e-5)
    total = reference_batch_loss(LOGITS.double(), LABELS, s).item() * expected_tokens
    assert float(stats["extra_sum"]) == pytest.approx(total - ce_only, rel=1e-4, abs=1e-6)


def test_ce_equals_torch_cross_entropy_on_shifted_labels():
    # an independent second reference for the shift and the ignore index
    loss, _ = causal_lm_loss(LOGITS, LABELS, LossSettings("ce"))
    expected = torch.nn.functional.cross_entropy(LOGITS[:, :-1].reshape(-1, V), LABELS[:, 1:].reshape(-1),
                                                 ignore_index=IGNORE)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ------------------------------------------------------------------ SED: gradient identity and mask


@pytest.mark.parametrize("sed_lambda", [1.0, 2.5])
def test_sed_gradient_is_ce_gradient_times_one_scalar(sed_lambda):
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(40, V, generator=g) * 2.0).requires_grad_(True)  # [N, V]
    y = torch.randint(0, V, (40,), generator=g)  # [N]
    with torch.no_grad():
        p = torch.softmax(z.double(), -1)  # [N, V]
        mass = top_k_mass(p, 2)  # [N]
        tau = float(mass.median())
        mask = (mass < tau).double()  # [N]
    s = LossSettings("sed", tau=tau, sed_lambda=sed_lambda, top_k=2)
    per_token, _ = token_losses(z, y, s)
    per_token.sum().backward()  # rows are independent: row t's gradient is dL_t/dz_t

    e_y = torch.nn.functional.one_hot(y, V).double()  # [N, V]
    p_y = p.gather(-1, y[:, None])  # [N, 1]
    expected = (p - e_y) * (1 + sed_lambda * mask[:, None] * p_y * (1 - 2 * p_y))  # [N, V]
    torch.testing.assert_close(z.grad.double(), expected, rtol=1e-4, atol=1e-6)
    # the identity is not CE's gradient where the mask is on
    masked = mask.bool()
    assert masked.any() and (~masked).any()
    assert (z.grad.double()[masked] - (p - e_y)[masked]).abs().max() > 1e-3
    torch.testing.assert_close(z.grad.double()[~masked], (p - e_y)[~masked], rtol=1e-4, atol=1e-6)


def test_sed_with_tau_above_every_mass_is_sed_nomask():
    tau = max(reference_masses(LOGITS, LABELS, 2)) + 1e-3
    for s_sed, s_other in ((LossSettings("sed", tau=tau), LossSettings("sed_nomask")),
                           (LossSettings("sed", tau=0.0), LossSettings("ce")),
                           (LossSettings("sed", tau=-1.0), LossSettings("ce"))):
        a, grad_a, *_ = module_and_reference(LOGITS, LABELS, s_sed)
        b, grad_b, *_ = module_and_reference(LOGITS, LABELS, s_other)
        assert a.item() == pytest.approx(b.item(), rel=1e-6)
        torch.testing.assert_close(grad_a, grad_b)
    # and in between it is neither
    mid = causal_lm_loss(LOGITS, LABELS, SETTINGS["sed"])[0].item()
    assert causal_lm_loss(LOGITS, LABELS, LossSettings("ce"))[0].item() < mid
    assert mid < causal_lm_loss(LOGITS, LABELS, LossSettings("sed_nomask"))[0].item()


def test_sed_without_tau_is_refused():
    with pytest.raises(ValueError, match="tau"):
        causal_lm_loss(LOGITS, LABELS, LossSettings("sed"))


@pytest.mark.parametrize("settings", [LossSettings("kl"), LossSettings("gem", gem_weighting="cubic")])
def test_unknown_settings_are_refused(settings):
    with pytest.raises(ValueError):
        causal_lm_loss(LOGITS, LABELS, settings)


# ------------------------------------------------------------------ normalization


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_halves_with_num_items_in_batch_sum_to_the_full_batch(name):
    s = SETTINGS[name]
    logits, labels = make_batch(seed=2, batch=4)
    labels[1:, 2:5] = IGNORE  # halves of different sizes: a mean of means would be wrong
    tau_s = (LossSettings(**{**s.__dict__, "tau": midpoint_tau(logits, labels, s.top_k)})
             if loss_named(s.loss).needs_tau else s)
    total = int((labels[:, 1:] != IGNORE).sum())

    full_leaf = logits.clone().requires_grad_(True)
    full, _ = causal_lm_loss(full_leaf, labels, tau_s)
    full.backward()

    split_leaf = logits.clone().requires_grad_(True)
    first, _ = causal_lm_loss(split_leaf[:1], labels[:1], tau_s, num_items_in_batch=total)
    second, _ = causal_lm_loss(split_leaf[1:], labels[1:], tau_s, num_items_in_batch=torch.tensor(total))
    (first + second).backward()

    assert (first + second).item() == pytest.approx(full.item(), rel=1e-6)
    torch.testing.assert_close(split_leaf.grad, full_leaf.grad)
    # the default (per-call mean) would not add up: the test's split is unequal
    mean_a, _ = causal_lm_loss(logits[:1], labels[:1], tau_s)
    mean_b, _ = causal_lm_loss(logits[1:], labels[1:], tau_s)
    assert (mean_a + mean_b).item() / 2 != pytest.approx(full.item(), rel=1e-4)


def test_num_items_in_batch_divides_the_sum():
    s = LossSettings("ce")
    mean, stats = causal_lm_loss(LOGITS, LABELS, s)
    summed, _ = causal_lm_loss(LOGITS, LABELS, s, num_items_in_batch=1)
    assert summed.item() == pytest.approx(mean.item() * int(stats["tokens"]), rel=1e-6)


def test_a_batch_without_labels_gives_zero_not_nan():
    labels = torch.full((1, T), IGNORE)
    labels[0, 0] = 1  # position 0 is never a target
    loss, stats = causal_lm_loss(LOGITS[:1], labels, LossSettings("ce"))
    assert int(stats["tokens"]) == 0 and loss.item() == 0.0


# ------------------------------------------------------------------ closed forms


def two_token_case(logit_0: float, target: int, s: LossSettings):
    z = torch.tensor([[logit_0, 0.0]], requires_grad=True)  # [N=1, V=2]
    per_token, stats = token_losses(z, torch.tensor([target]), s)
    per_token.sum().backward()
    return per_token.item(), z.grad[0].tolist(), stats


@pytest.mark.parametrize("loss", ["ce", "sed_nomask", "sed"])
def test_uniform_logits_over_two_tokens(loss):
    # p = (1/2, 1/2): CE = log 2, p_y = 1/2 so the SED penalty and its gradient factor vanish
    s = LossSettings(loss, tau=2.0, sed_lambda=5.0)
    value, grad, _ = two_token_case(0.0, 0, s)
    assert value == pytest.approx(math.log(2), abs=1e-7)
    assert grad == pytest.approx([-0.5, 0.5], abs=1e-7)


def test_uniform_logits_dft_and_gem():
    value, grad, _ = two_token_case(0.0, 1, LossSettings("dft"))
    assert value == pytest.approx(math.log(2) / 2, abs=1e-7)  # CE * p_y
    assert grad == pytest.approx([0.25, -0.25], abs=1e-7)  # p_y * (p - e_y)
    # GEM: q = softmax(0 / beta) = uniform, sum_v q log p = -log 2 cancels CE; grad = c - S e_y = q - e_y
    value, grad, _ = two_token_case(0.0, 1, LossSettings("gem", gem_beta=0.7))
    assert value == pytest.approx(0.0, abs=1e-7)
    assert grad == pytest.approx([0.5, -0.5], abs=1e-7)


def test_gem_logsigmoid_against_its_formula_in_closed_form():
    """GEM's loss as its code writes it, L = -sum_v q_v w_v (log p_y - log p_v), on z = (log 3, 0),
    y = 0, beta = 1: p = q = (3/4, 1/4), w = sigmoid(0.01 (z - z_y)) = (1/2, sigmoid(-0.01 log 3)).
    The v = y term vanishes, so L = -q_1 w_1 (log p_0 - log p_1) = -(1/4) w_1 log 3, and
    dL/dz = c - S e_y with c = q * w, S = sum c. CE's weight is S ~ 0.5, not 1."""
    w1 = 1.0 / (1.0 + math.exp(0.01 * math.log(3)))
    c = (0.75 * 0.5, 0.25 * w1)
    value, grad, _ = two_token_case(math.log(3), 0, LossSettings("gem", gem_beta=1.0, gem_weighting="logsigmoid"))
    assert value == pytest.approx(-0.25 * w1 * math.log(3), abs=1e-7)
    assert grad == pytest.approx([c[0] - sum(c), c[1]], abs=1e-7)


@pytest.mark.parametrize("tau, masked", [(0.8, True), (0.7, False)])
def test_sed_closed_form_at_three_quarters(tau, masked):
    # z = (log 3, 0): p = (3/4, 1/4); top-1 mass 3/4; CE = log 4/3; penalty (3/4 - 1/2)^2 = 1/16;
    # gradient (p - e_y) * (1 + p_y (1 - 2 p_y)) = (-1/4, 1/4) * 5/8 when masked
    value, grad, stats = two_token_case(math.log(3), 0, LossSettings("sed", tau=tau, sed_lambda=1.0, top_k=1))
    assert int(stats["masked"]) == int(masked)
    if masked:
        assert value == pytest.approx(math.log(4 / 3) + 1 / 16, abs=1e-6)
        assert grad == pytest.approx([-5 / 32, 5 / 32], abs=1e-6)
    else:
        assert value == pytest.approx(math.log(4 / 3), abs=1e-6)
        assert grad == pytest.approx([-1 / 4, 1 / 4], abs=1e-6)


def test_top_k_mass_by_hand():
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.25, 0.25, 0.25, 0.25]])
    assert top_k_mass(probs, 1).tolist() == pytest.approx([0.5, 0.25])
    assert top_k_mass(probs, 2).tolist() == pytest.approx([0.75, 0.5])
    assert top_k_mass(probs, 4).tolist() == pytest.approx([1.0, 1.0])


# ------------------------------------------------------------------ a second, scalar reference
# The vectorised references (tests/loss_references.py) checked once more by a plain loop over
# tokens and vocabulary entries, so that a slip shared by a reference and the code it checks
# (a wrong gather, an axis, a broadcast) cannot pass both.


def scalar_token_loss(z: list[float], y: int, s: LossSettings) -> float:
    """One token's loss from the formula with Python floats; z: the logits of one position."""
    top = max(z)
    e = [math.exp(v - top) for v in z]
    p = [v / sum(e) for v in e]
    log_p = [math.log(v) for v in p]
    ce = -log_p[y]
    if s.loss == "ce":
        return ce
    if s.loss in ("sed", "sed_nomask"):
        mask = 1.0 if s.loss == "sed_nomask" or sum(sorted(p, reverse=True)[: s.top_k]) < s.tau else 0.0
        return ce + s.sed_lambda * mask * (p[y] - 0.5) ** 2
    if s.loss == "gem":  # GEM's gem_loss_func: -sum_v q_v w_v (log p_y - log p_v)
        eq = [math.exp((v - top) / s.gem_beta) for v in z]
        q = [v / sum(eq) for v in eq]
        w = [1 / (1 + math.exp(-0.01 * (v - z[y]))) if s.gem_weighting == "logsigmoid" else 1.0 for v in z]
        return -sum(q[v] * w[v] * (log_p[y] - log_p[v]) for v in range(len(z)))
    if s.loss == "dft":
        return ce * p[y]
    raise AssertionError(f"no scalar reference for loss {s.loss!r}: add one here")


@pytest.mark.parametrize("name", list(SETTINGS))
def test_the_references_match_a_scalar_loop(name):
    s = SETTINGS[name]
    rows = LOGITS[:, :-1].reshape(-1, V).double()
    targets = LABELS[:, 1:].reshape(-1)
    keep = targets != IGNORE
    rows, targets = rows[keep], targets[keep]
    vectorised = reference_per_token_f64(rows, targets, s)
    scalar = [scalar_token_loss(r.tolist(), int(t), s) for r, t in zip(rows, targets)]
    assert vectorised.tolist() == pytest.approx(scalar, rel=1e-12, abs=1e-12)
