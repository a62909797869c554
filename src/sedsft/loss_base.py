"""What one SFT loss provides to the code that computes it (the losses: `sedsft.loss_registry`).

Two paths compute every loss and must agree (tests/test_chunked_loss.py):

* the reference on full logits, `losses.token_losses` (also what `chunked_loss.checkpointed_lm_loss`
  runs per chunk): it computes what all losses share (log p, CE, p_y, the statistics) and asks the
  loss for its per-token value, `Loss.token_loss`;
* the fused chunk, `chunked_loss._chunk_loss_and_grad`: it computes the softmax in place and asks
  the loss for any constants it needs from the raw logits first (`fused_constants`), then for the
  per-token value and the closed-form gradient with respect to the logits (`fused_terms`,
  `fused_grad`), so that autograd never sees the [tokens, vocab] logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch


@dataclass(frozen=True)
class LossSettings:
    loss: str
    tau: float | None = None  # SED mask threshold (from the threshold artifact)
    sed_lambda: float = 1.0
    top_k: int = 2
    gem_beta: float = 0.7
    gem_weighting: str = "linear"


@dataclass(frozen=True)
class TokenTerms:
    """What `losses.token_losses` has computed for N rows of full logits, for every loss."""
    logits: torch.Tensor  # [N, V] fp32
    targets: torch.Tensor  # [N]
    log_probs: torch.Tensor  # [N, V], with gradient
    probs: torch.Tensor  # [N, V], exp(log_probs) without gradient
    ce: torch.Tensor  # [N] -log p_y, with gradient
    p_y: torch.Tensor  # [N], with gradient


@dataclass(frozen=True)
class Chunk:
    """One chunk of c rows inside the fused loss, after its softmax. z is the caller's scratch
    buffer: intact while `fused_terms` runs, overwritten before `fused_grad` runs."""
    z: torch.Tensor  # [c, V] fp32 logits
    y: torch.Tensor  # [c] targets
    z_y: torch.Tensor  # [c, 1] target logits
    p: torch.Tensor  # [c, V] softmax(z); becomes the gradient buffer
    lse: torch.Tensor  # [c] log-sum-exp of z
    ce: torch.Tensor  # [c] -log p_y
    p_y: torch.Tensor  # [c]
    constants: Any  # what the loss's `fused_constants` returned


@dataclass(frozen=True)
class ChunkTerms:
    """A loss's per-token value on a chunk and what its gradient needs."""
    per_token: torch.Tensor  # [c]
    masked: torch.Tensor | None = None  # scalar: rows with M = 1 (SED); None counts as 0
    scale: torch.Tensor | None = None  # [c]: dL/dz = (p - e_y) * scale; None means 1


class Loss(ABC):
    """One SFT loss. Subclasses set `name` and, where they apply, `parameters` (the LossSettings
    fields, i.e. `sft.*` config keys, the loss reads) and `needs_tau` (it reads the calibrated
    threshold), and implement `token_loss` and `fused_terms`; the defaults of the rest fit a
    loss whose gradient with respect to z is (p - e_y) times a per-row scale."""

    name: ClassVar[str]
    parameters: ClassVar[tuple[str, ...]] = ()
    needs_tau: ClassVar[bool] = False

    def check(self, s: LossSettings) -> None:
        """Refuse settings this loss cannot run with, before any work is done."""
        if self.needs_tau and s.tau is None:
            raise ValueError(f"loss {self.name!r} needs tau (run the threshold stage or set threshold.tau)")

    @abstractmethod
    def token_loss(self, s: LossSettings, t: TokenTerms) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The per-token losses [N] by autograd, and the statistics it sets (extra_sum, masked)."""

    def fused_constants(self, s: LossSettings, z: torch.Tensor, z_y: torch.Tensor, m: torch.Tensor,
                        scratch: torch.Tensor) -> Any:
        """Constants from the raw logits z [c, V] (z_y [c, 1], row maxima m [c, 1]) before the
        softmax overwrites `scratch` [c, V], which holds z - m and must hold it again on return."""
        return None

    @abstractmethod
    def fused_terms(self, s: LossSettings, chunk: Chunk) -> ChunkTerms:
        """The per-token losses of a chunk (no autograd) and what `fused_grad` needs."""

    def fused_grad(self, grad: torch.Tensor, chunk: Chunk, terms: ChunkTerms) -> None:
        """Turn grad [c, V], which holds p, into dL/dz in place (not yet divided by the denominator)."""
        grad.scatter_add_(-1, chunk.y[:, None], torch.full_like(chunk.z_y, -1.0))
        if terms.scale is not None:
            grad.mul_(terms.scale[:, None])
