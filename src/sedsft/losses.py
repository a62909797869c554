"""The SFT losses on full token logits: the reference path (CE, SED, SED without mask, GEM, DFT).

`token_losses` computes what every loss shares (log p, CE, p_y, the statistics) and takes the
per-token value from the loss `sft.loss` names; the formulas of every loss are the docstrings of
its class in `sedsft.loss_registry`. Reductions are sums: the caller divides by the number of label
tokens of the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sedsft.loss_base import LossSettings, TokenTerms
from sedsft.loss_registry import check_settings, loss_names, top_k_mass

__all__ = ["LOSSES", "LossSettings", "causal_lm_loss", "token_losses", "top_k_mass"]

LOSSES = loss_names()


def token_losses(logits: torch.Tensor, targets: torch.Tensor, s: LossSettings) -> tuple[torch.Tensor, dict]:
    """Per-token losses [N] for logits [N, V] and targets [N] (no ignored rows), and statistics."""
    loss = check_settings(s)
    logits = logits.float()  # the penalty on p_y needs fp32 probabilities even under bf16
    log_probs = F.log_softmax(logits, dim=-1)  # [N, V]
    logp_y = log_probs.gather(-1, targets[:, None]).squeeze(-1)  # [N]
    ce = -logp_y
    p_y = logp_y.exp()
    with torch.no_grad():
        probs = log_probs.exp()  # [N, V]
        stats = {
            "ce_sum": ce.detach().sum(),
            "entropy_sum": -(probs * log_probs).sum(-1).sum(),
            "correct": (logits.argmax(-1) == targets).sum(),
            "extra_sum": torch.zeros((), device=logits.device),
            "masked": torch.zeros((), device=logits.device),
        }
    per_token, loss_stats = loss.token_loss(s, TokenTerms(logits=logits, targets=targets, log_probs=log_probs,
                                                          probs=probs, ce=ce, p_y=p_y))
    stats.update(loss_stats)
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
