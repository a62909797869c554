"""The SFT loss family, one class per loss, looked up by its `sft.loss` name.

Notation, per label token t with target y: z the logits, p = softmax(z), e_y the one-hot of y,
CE_t = -log p_y, stopgrad(x) a constant. Each class states its loss and its closed-form gradient
with respect to z (the fused path's; both are checked against autograd and a float64
re-statement in tests/test_losses.py and tests/test_chunked_loss.py). Reductions are sums: the
caller divides by the number of label tokens of the global batch. The method: the README's
"The method in one line" and "SFT: losses"; the paper: Chen, Liu, Meng (2026), "Selectively
Encouraging Diversity in Supervised Fine-Tuning"; GEM as in its original code, liziniu/GEM
`gem_loss_func`.

Adding a loss is one class here with `@register`, plus its float64 reference in
tests/loss_references.py; tests/test_loss_registry.py checks that the config schema's `sft.loss`
enum lists it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sedsft.loss_base import ChunkTerms, Loss, LossSettings

_REGISTRY: dict[str, Loss] = {}


def register(cls: type[Loss]) -> type[Loss]:
    if cls.name in _REGISTRY:
        raise ValueError(f"loss {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls()
    return cls


def loss_names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def loss_named(name: str) -> Loss:
    if name not in _REGISTRY:
        raise ValueError(f"unknown loss {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def check_settings(s: LossSettings) -> Loss:
    """The loss `s` names, after its refusals (unknown name, missing tau, bad parameters)."""
    loss = loss_named(s.loss)
    loss.check(s)
    return loss


def config_parameters() -> tuple[str, ...]:
    """Every LossSettings field some loss reads from the `sft` config section, in registry order."""
    return tuple(dict.fromkeys(key for loss in _REGISTRY.values() for key in loss.parameters))


def top_k_mass(probs: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of the k largest probabilities per row: high = confident, low = flexible token."""
    return probs.topk(k, dim=-1).values.sum(-1)


@register
class CE(Loss):
    """CE_t = -log p_y;  dL/dz = p - e_y."""

    name = "ce"

    def token_loss(self, s, t):
        return t.ce, {}

    def fused_terms(self, s, chunk):
        return ChunkTerms(per_token=chunk.ce)


@register
class SED(Loss):
    """CE_t + lambda * M_t * (p_y - 1/2)^2,  M_t = 1[top-k mass of p < tau] (no gradient);
    dL/dz = (p - e_y) * [1 + lambda * M_t * p_y * (1 - 2 p_y)]  since d p_y/dz = p_y (e_y - p)."""

    name = "sed"
    parameters = ("sed_lambda", "top_k")
    needs_tau = True

    def mask(self, s: LossSettings, probs: torch.Tensor, p_y: torch.Tensor) -> torch.Tensor:
        """M [n] for probabilities probs [n, V] (no gradient)."""
        return (top_k_mass(probs, s.top_k) < s.tau).float()

    def token_loss(self, s, t):
        with torch.no_grad():
            mask = self.mask(s, t.probs, t.p_y)  # [N]
        extra = s.sed_lambda * mask * (t.p_y - 0.5) ** 2
        return t.ce + extra, {"extra_sum": extra.detach().sum(), "masked": mask.detach().sum()}

    def fused_terms(self, s, chunk):
        mask = self.mask(s, chunk.p, chunk.p_y)  # [c]
        p_y = chunk.p_y
        return ChunkTerms(per_token=chunk.ce + s.sed_lambda * mask * (p_y - 0.5) ** 2, masked=mask.sum(),
                          scale=1.0 + s.sed_lambda * mask * p_y * (1.0 - 2.0 * p_y))  # [c]


@register
class SEDNoMask(SED):
    """SED with M_t = 1 for every token: CE_t + lambda * (p_y - 1/2)^2."""

    name = "sed_nomask"
    parameters = ("sed_lambda",)
    needs_tau = False

    def mask(self, s, probs, p_y):
        return torch.ones_like(p_y)


@dataclass(frozen=True)
class GEMChunkTerms(ChunkTerms):
    coef_sum: torch.Tensor | None = None  # [c] S, the weight of e_y in GEM's gradient


@register
class GEM(Loss):
    """-sum_v c_v (log p_y - log p_v) = -S log p_y + sum_v c_v log p_v, c = q * w,
    S = sum_v c_v (constants), q = stopgrad softmax(z / beta), w = 1 ("linear", so S = 1) or
    stopgrad sigmoid(0.01 (z_v - z_y)) ("logsigmoid", S about 1/2: CE's weight is S, not 1);
    dL/dz = c - S e_y  since d log p_v/dz = e_v - p."""

    name = "gem"
    parameters = ("gem_beta", "gem_weighting")
    WEIGHTINGS = ("linear", "logsigmoid")

    def check(self, s):
        super().check(s)
        if s.gem_weighting not in self.WEIGHTINGS:
            raise ValueError(f"unknown gem_weighting {s.gem_weighting!r}")

    def token_loss(self, s, t):
        logits, targets = t.logits, t.targets
        with torch.no_grad():
            q = F.softmax(logits / s.gem_beta, dim=-1)  # [N, V]; times w below
            if s.gem_weighting == "logsigmoid":
                q = q * torch.sigmoid(0.01 * (logits - logits.gather(-1, targets[:, None])))
        c = q  # [N, V] the constants c = q * w
        per_token = c.sum(-1) * t.ce + (c * t.log_probs).sum(-1)  # -S log p_y + sum_v c_v log p_v
        return per_token, {"extra_sum": (per_token - t.ce).detach().sum()}

    def fused_constants(self, s, z, z_y, m, scratch):
        coef = torch.sub(z, m).div_(s.gem_beta).exp_()  # [c, V] q = softmax(z / beta) (max-shifted)
        coef.div_(coef.sum(-1, keepdim=True))
        if s.gem_weighting == "logsigmoid":  # w = sigmoid(0.01 (z - z_y)), built in the scratch buffer
            torch.sub(z, z_y, out=scratch).mul_(0.01).sigmoid_()
            coef.mul_(scratch)
            torch.sub(z, m, out=scratch)
        return coef  # c = q * w

    def fused_terms(self, s, chunk):
        # sum_v c_v log p_v = sum_v c_v z_v - S lse: no [c, V] log p is formed
        coef = chunk.constants  # [c, V]
        coef_sum = coef.sum(-1)  # [c] S
        return GEMChunkTerms(per_token=coef_sum * chunk.ce + ((coef * chunk.z).sum(-1) - coef_sum * chunk.lse),
                             coef_sum=coef_sum)

    def fused_grad(self, grad, chunk, terms):
        # S (p - e_y) + (c - S p) = c - S e_y: p cancels
        grad.copy_(chunk.constants)
        grad.scatter_add_(-1, chunk.y[:, None], -terms.coef_sum[:, None])


@register
class DFT(Loss):
    """CE_t * stopgrad(p_y);  dL/dz = p_y * (p - e_y)  (p_y is a constant)."""

    name = "dft"

    def token_loss(self, s, t):
        per_token = t.ce * t.p_y.detach()
        return per_token, {"extra_sum": (per_token - t.ce).detach().sum()}

    def fused_terms(self, s, chunk):
        return ChunkTerms(per_token=chunk.ce * chunk.p_y, scale=chunk.p_y)
