"""Float64 references of the SFT losses, one per registered loss, written again from the formulas
(the docstrings of the classes in sedsft.loss_registry; the paper: Chen, Liu, Meng 2026,
"Selectively Encouraging Diversity in Supervised Fine-Tuning"), and the settings the tests run
each loss with. Adding a loss to the registry means adding its entry to REFERENCES.

A reference takes the float64 quantities of n rows (with gradient) and the settings and returns
the per-token losses [n] and the mask M [n] (None for a loss without one)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from sedsft.loss_registry import loss_named
from sedsft.losses import LossSettings


@dataclass(frozen=True)
class Rows:
    z: torch.Tensor  # [n, V] float64 logits
    y: torch.Tensor  # [n] targets
    log_p: torch.Tensor  # [n, V]
    p: torch.Tensor  # [n, V]
    p_y: torch.Tensor  # [n]
    ce: torch.Tensor  # [n]


def ce(r: Rows, s: LossSettings):
    return r.ce, None


def sed(r: Rows, s: LossSettings):
    mask = (r.p.detach().topk(s.top_k, -1).values.sum(-1) < s.tau).double()  # no gradient
    return r.ce + s.sed_lambda * mask * (r.p_y - 0.5) ** 2, mask


def sed_nomask(r: Rows, s: LossSettings):
    mask = torch.ones_like(r.ce)
    return r.ce + s.sed_lambda * mask * (r.p_y - 0.5) ** 2, mask


def gem(r: Rows, s: LossSettings):
    zc = r.z.detach()
    q = torch.softmax(zc / s.gem_beta, -1)
    w = torch.sigmoid(0.01 * (zc - zc.gather(-1, r.y[:, None]))) if s.gem_weighting == "logsigmoid" else 1.0
    return -(q * w * (r.log_p.gather(-1, r.y[:, None]) - r.log_p)).sum(-1), None  # GEM's gem_loss_func


def dft(r: Rows, s: LossSettings):
    return r.ce * r.p_y.detach(), None


@dataclass(frozen=True)
class Reference:
    formula: Callable[[Rows, LossSettings], tuple[torch.Tensor, torch.Tensor | None]]
    cases: dict[str, dict]  # test case name -> LossSettings fields (tau comes from the test's data)


REFERENCES = {
    "ce": Reference(ce, {"ce": {}}),
    "sed": Reference(sed, {"sed": {"sed_lambda": 1.0, "top_k": 2},
                           "sed_lambda3_k3": {"sed_lambda": 3.0, "top_k": 3}}),
    "sed_nomask": Reference(sed_nomask, {"sed_nomask": {"sed_lambda": 1.0}}),
    "gem": Reference(gem, {"gem_linear": {"gem_beta": 0.7, "gem_weighting": "linear"},
                           "gem_logsigmoid": {"gem_beta": 0.7, "gem_weighting": "logsigmoid"}}),
    "dft": Reference(dft, {"dft": {}}),
}
CASES = {case: (loss, fields) for loss, ref in REFERENCES.items() for case, fields in ref.cases.items()}


def case_settings(case: str, tau_for_top_k: Callable[[int], float]) -> LossSettings:
    """The settings of a test case; a loss that needs tau gets tau_for_top_k(its top_k)."""
    loss, fields = CASES[case]
    s = LossSettings(loss, **fields)
    return dataclasses.replace(s, tau=tau_for_top_k(s.top_k)) if loss_named(loss).needs_tau else s


def reference_f64(z: torch.Tensor, y: torch.Tensor, s: LossSettings) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(per-token losses [n], mask [n] or None) in float64 for logits z [n, V] and targets y [n]."""
    z = z.double()
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    p_y = p.gather(-1, y[:, None]).squeeze(-1)
    ce = -log_p.gather(-1, y[:, None]).squeeze(-1)
    return REFERENCES[s.loss].formula(Rows(z=z, y=y, log_p=log_p, p=p, p_y=p_y, ce=ce), s)


def reference_per_token_f64(z: torch.Tensor, y: torch.Tensor, s: LossSettings) -> torch.Tensor:
    """Per-token losses [n] from the formulas in float64; z [n, V]."""
    return reference_f64(z, y, s)[0]
