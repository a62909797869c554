"""The SFT loss family on token logits: CE, SED, SED without mask, GEM, DFT.

Per label token t with target y, p = softmax(z) (the method: the README's "The method in one
line" and "SFT: losses"; GEM as in its original code, liziniu/GEM `gem_loss_func`):
    ce          CE_t = -log p_y
    sed         CE_t + lambda * M_t * (p_y - 1/2)^2,  M_t = 1[top-k mass of p < tau] (no gradient)
    sed_nomask  CE_t + lambda * (p_y - 1/2)^2
    gem         -sum_v c_v (log p_y - log p_v) = -S log p_y + sum_v c_v log p_v,
                c = q * w, S = sum_v c_v (constants), q = stopgrad softmax(z / beta),
                w = 1 ("linear", so S = 1) or stopgrad sigmoid(0.01 (z_v - z_y)) ("logsigmoid",
                S about 1/2: CE's weight is S, not 1)
    dft         CE_t * stopgrad(p_y)
Reductions are sums: the caller divides by the number of label tokens of the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSSES = ("ce", "sed", "sed_nomask", "gem", "dft")


@dataclass(frozen=True)
class LossSettings:
    loss: str
    tau: float | None = None  # SED mask threshold (from the threshold artifact)
    sed_lambda: float = 1.0
    top_k: int = 2
    gem_beta: float = 0.7
    gem_weighting: str = "linear"


def top_k_mass(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of the k largest probabilities per row: high = confident, low = flexible token."""
    return probs.topk(k, dim=-1).values.sum(-1)


def token_losses(logits: torch.Tensor, targets: torch.Tensor, s: LossSettings) -> tuple[torch.Tensor, dict]:
    """Per-token losses [N] for logits [N, V] and targets [N] (no ignored rows), and statistics."""
    logits = logits.float()  # the penalty on p_y needs fp32 probabilities even under bf16
    log_probs = F.log_softmax(logits, dim=-1)  # [N, V]
    logp_y = log_probs.gather(-1, targets[:, None]).squeeze(-1)  # [N]
    ce = -logp_y
    p_y = logp_y.exp()
    with torch.no_grad():
        probs = log_probs.exp()
        stats = {
            "ce_sum": ce.detach().sum(),
            "entropy_sum": -(probs * log_probs).sum(-1).sum(),
            "correct": (logits.argmax(-1) == targets).sum(),
            "extra_sum": torch.zeros((), device=logits.device),
            "masked": torch.zeros((), device=logits.device),
        }
    if s.loss == "ce":
        per_token = ce
    elif s.loss in ("sed", "sed_nomask"):
        if s.loss == "sed":
            if s.tau is None:
                raise ValueError("loss 'sed' needs tau (run the threshold stage or set threshold.tau)")
            with torch.no_grad():
                mask = (top_k_mass(log_probs.exp(), s.top_k) < s.tau).float()  # [N]
        else:
            mask = torch.ones_like(p_y)
        extra = s.sed_lambda * mask * (p_y - 0.5) ** 2
        per_token = ce + extra
        stats.update(extra_sum=extra.detach().sum(), masked=mask.detach().sum())
    elif s.loss == "gem":
        with torch.no_grad():
            q = F.softmax(logits / s.gem_beta, dim=-1)  # [N, V]; times w below
            if s.gem_weighting == "logsigmoid":
                q = q * torch.sigmoid(0.01 * (logits - logits.gather(-1, targets[:, None])))
            elif s.gem_weighting != "linear":
                raise ValueError(f"unknown gem_weighting {s.gem_weighting!r}")
        c = q  # [N, V] the constants c = q * w
        per_token = c.sum(-1) * ce + (c * log_probs).sum(-1)  # -S log p_y + sum_v c_v log p_v
        stats.update(extra_sum=(per_token - ce).detach().sum())
    elif s.loss == "dft":
        per_token = ce * p_y.detach()
        stats.update(extra_sum=(per_token - ce).detach().sum())
    else:
        raise ValueError(f"unknown loss {s.loss!r}; choose one of {', '.join(LOSSES)}")
    return per_token, stats


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, s: LossSettings,
                   num_items_in_batch: int | torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """Loss of a causal LM batch: logits [B, T, V], labels [B, T] (-100 = ignore), shifted inside.
    Normalised by num_items_in_batch (label tokens of the whole accumulated batch) when given."""
    shift_logits = logits[:, :-1, :].reshape(-1, logits.size(-1))  # [B*(T-1), V]
    shift_labels = labels[:, 1:].reshape(-1).to(shift_logits.device)  # [B*(T-1)]
    keep = shift_labels != -100
    per_token, stats = token_losses(shift_logits[keep], shift_labels[keep], s)
    denominator = num_items_in_batch if num_items_in_batch is not None else keep.sum().clamp(min=1)
    stats["tokens"] = keep.sum()
    return per_token.sum() / denominator, stats
