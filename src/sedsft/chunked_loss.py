"""Memory-efficient LM losses: the SFT loss family without materialising (tokens x vocab) logits.

The straightforward path (`losses.causal_lm_loss`) takes logits [B, T, V] from the model, so the
autograd graph holds the full logits and, for SED and GEM, a full softmax / top-k next to them.
At the paper's scale (8192 tokens x 128256 vocab) that is 4 GB per fp32 copy. This module
computes the same losses from the last hidden state and the lm_head instead, one chunk of rows
at a time:

* `fused_linear_loss`: an `autograd.Function` that, in forward, computes for each chunk of rows
  the fp32 logits hidden_c @ W.T, their log-sum-exp, p_y, the SED top-k mass and the closed-form
  gradient with respect to the chunk's logits, and immediately contracts that gradient into
  grad_hidden [N, H] and grad_weight [V, H]. Only those two (and never a logits tensor) are saved;
  backward multiplies them by the incoming scalar gradient.
* `checkpointed_lm_loss`: for an lm_head whose weight cannot be read directly (DeepSpeed ZeRO-3
  partitions it and its forward hooks gather it), per chunk
  `torch.utils.checkpoint.checkpoint(lm_head + losses.token_losses)`; one chunk's logits live at
  a time in forward, and one chunk's recomputation at a time in backward.
* `lm_loss`: either of the two for any Hugging Face causal LM whose logits are
  `last_hidden_state @ lm_head.weight.T` (models with logit soft-capping or scaling, or an
  lm_head bias, are refused).

Each loss's closed-form gradient with respect to one token's logits is its class's `fused_grad`
in `sedsft.loss_registry` (the formulas: the classes' docstrings), checked against autograd of
`losses.token_losses` in tests/test_chunked_loss.py.

Normalisation: every loss is a sum over label tokens divided by `denominator` (the number of label
tokens in the global batch, like the HF Trainer's num_items_in_batch); a denominator of 0 (a batch
without labels) counts as 1, so such a batch gives 0, not NaN.

Statistics (detached scalars, sums over the label tokens): ce_sum, extra_sum (loss - CE summed;
the SED penalty, GEM's extra term, and for DFT CE * (p_y - 1)), masked (tokens with M = 1: the
SED mask, every token for sed_nomask, 0 for the others), entropy_sum (entropy of p), correct
(argmax == target), tokens.
"""

from __future__ import annotations

import contextlib

from typing import Callable

import torch
import torch.utils.checkpoint
from torch import nn

from sedsft.loss_base import Chunk
from sedsft.loss_registry import check_settings, loss_named
from sedsft.losses import LossSettings, token_losses

IGNORE_INDEX = -100
STAT_NAMES = ("ce_sum", "extra_sum", "masked", "entropy_sum", "correct", "tokens")
IMPLS = ("fused", "checkpointed")


# ------------------------------------------------------------------ helpers


def _denominator(denominator, device: torch.device) -> torch.Tensor:
    """fp32 scalar on `device`; 0 becomes 1 (a batch without labels has loss 0, not NaN)."""
    d = torch.as_tensor(denominator, dtype=torch.float32).to(device).reshape(())
    return torch.where(d == 0, torch.ones_like(d), d)


def _stats_dict(vec: torch.Tensor) -> dict[str, torch.Tensor]:
    return {name: vec[i] for i, name in enumerate(STAT_NAMES)}


_MM_OUT_DTYPE_OK: dict[tuple[str, torch.dtype], bool] = {}


def _mm_out_dtype_ok(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether `torch.mm(a, b, out_dtype=torch.float32)` works for low-precision inputs here
    (CUDA in recent torch): fp32 logits from bf16 operands without an fp32 copy of the weight."""
    if device.type != "cuda":
        return False
    key = (str(device), dtype)
    if key not in _MM_OUT_DTYPE_OK:
        try:
            a = torch.ones(2, 2, dtype=dtype, device=device)
            ok = torch.mm(a, a.t(), out_dtype=torch.float32).dtype == torch.float32
        except (TypeError, RuntimeError, NotImplementedError):
            ok = False
        _MM_OUT_DTYPE_OK[key] = ok
    return _MM_OUT_DTYPE_OK[key]


def _chunk_loss_and_grad(z: torch.Tensor, y: torch.Tensor, s: LossSettings, need_grad: bool):
    """For fp32 logits z [c, V] and targets y [c]: the loss summed over the rows, the statistics
    vector (len(STAT_NAMES)) and, if need_grad, dL/dz [c, V] (fp32, not yet divided by the
    denominator). z is used as scratch space (overwritten). At most two [c, V] buffers besides z
    are alive at once (GEM: three), no (z - lse) / xlogy temporaries."""
    loss = loss_named(s.loss)
    c = z.shape[0]
    m = z.amax(dim=-1, keepdim=True)  # [c, 1]
    z_y = z.gather(-1, y[:, None])  # [c, 1]
    correct = (z.argmax(dim=-1) == y).sum()
    p = torch.sub(z, m)  # [c, V], becomes p = softmax(z)
    constants = loss.fused_constants(s, z, z_y, m, p)
    p.exp_()
    sum_exp = p.sum(-1, keepdim=True)  # [c, 1]
    p.div_(sum_exp)
    lse = (m + sum_exp.log()).squeeze(-1)  # [c]
    logp_y = z_y.squeeze(-1) - lse  # [c]
    ce = -logp_y
    p_y = logp_y.exp()
    chunk = Chunk(z=z, y=y, z_y=z_y, p=p, lse=lse, ce=ce, p_y=p_y, constants=constants)
    terms = loss.fused_terms(s, chunk)
    masked = terms.masked if terms.masked is not None else torch.zeros((), dtype=torch.float32, device=z.device)
    entropy = lse - z.mul_(p).sum(-1)  # H(p) = lse - sum_v p_v z_v; z is scratch from here on
    ce_sum = ce.sum()
    loss_sum = terms.per_token.sum()
    stats = torch.stack([ce_sum, loss_sum - ce_sum, masked, entropy.sum(), correct.float(),
                         torch.full((), float(c), device=z.device)])
    if not need_grad:
        return loss_sum, stats, None
    loss.fused_grad(p, chunk, terms)  # p's storage becomes dL/dz
    return loss_sum, stats, p


# ------------------------------------------------------------------ fused


def _mm_fp32_out(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with low-precision operands and an fp32 result (only where _mm_out_dtype_ok)."""
    return torch.mm(a, b, out_dtype=torch.float32)


def _stored_dtype(dtype: torch.dtype) -> torch.dtype:
    """Gradients computed in forward are kept in fp32 for fp16 inputs: stored in fp16 before the
    loss scale (applied in backward) multiplies them, small ones would underflow."""
    return torch.float32 if dtype == torch.float16 else dtype


class _FusedLinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, settings, denominator, chunk_size, need_h, need_w):
        device = hidden.device
        with torch.autocast(device_type=device.type, enabled=False):
            denom = _denominator(denominator, device)
            keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)  # [Nk]
            use_out_dtype = (hidden.dtype == weight.dtype == torch.bfloat16
                             and _mm_out_dtype_ok(device, torch.bfloat16))
            if use_out_dtype:  # bf16 operands, fp32 results, no fp32 copy of the weight
                w_mm, h_dtype, mm32 = weight, torch.bfloat16, _mm_fp32_out
            else:  # fp32 matmuls (one fp32 copy of a low-precision weight per call)
                w_mm, h_dtype, mm32 = weight.float(), torch.float32, torch.mm
            need_grad = need_h or need_w
            grad_hidden = (torch.zeros(hidden.shape, dtype=_stored_dtype(hidden.dtype), device=device)
                           if need_h else None)
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=device) if need_w else None
            loss = torch.zeros((), dtype=torch.float32, device=device)
            stats = torch.zeros(len(STAT_NAMES), dtype=torch.float32, device=device)
            for start in range(0, keep.numel(), chunk_size):
                idx = keep[start:start + chunk_size]  # [c]
                h_c = hidden.index_select(0, idx).to(h_dtype)  # [c, H]
                y_c = targets.index_select(0, idx)  # [c]
                z = mm32(h_c, w_mm.t())  # [c, V] fp32 logits
                loss_c, stats_c, g = _chunk_loss_and_grad(z, y_c, settings, need_grad)
                loss += loss_c
                stats += stats_c
                if not need_grad:
                    continue
                g.div_(denom)  # dL/dz of the normalised loss, [c, V] fp32
                g_mm = g.to(w_mm.dtype)
                if need_h:  # [c, H]
                    grad_hidden.index_copy_(0, idx, mm32(g_mm, w_mm).to(grad_hidden.dtype))
                if need_w:  # [V, H], accumulated in fp32
                    if use_out_dtype:
                        grad_weight += mm32(g_mm.t(), h_c)
                    else:
                        grad_weight.addmm_(g_mm.t(), h_c)
            loss = loss / denom
        if need_w:
            grad_weight = grad_weight.to(_stored_dtype(weight.dtype))
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.mark_non_differentiable(stats)
        return loss, stats

    @staticmethod
    def backward(ctx, grad_loss, grad_stats):
        grad_hidden, grad_weight = ctx.saved_tensors
        out = []
        for grad, dtype in zip((grad_hidden, grad_weight), ctx.dtypes):
            out.append(None if grad is None else (grad * grad_loss.to(grad.dtype)).to(dtype))
        return out[0], out[1], None, None, None, None, None, None


def fused_linear_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      settings: LossSettings, denominator, chunk_size: int = 1024
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of logits = hidden @ weight.T without materialising them.

    hidden [N, H], weight [V, H] (same device; dtypes may differ), targets [N] (IGNORE_INDEX =
    -100 skips a row), denominator: int / float / scalar tensor (label tokens of the global
    batch). Returns (fp32 scalar loss, stats dict of detached fp32 scalars; see STAT_NAMES).
    The logits are computed in fp32 (chunk_size rows at a time); gradients are computed during
    forward (only when grad is enabled and an input requires it), and returned in the inputs'
    dtypes, the weight gradient accumulated in fp32."""
    check_settings(settings)
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"need hidden [N, H] and weight [V, H], got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1]:
        raise ValueError(f"targets {tuple(targets.shape)} do not match hidden {tuple(hidden.shape)}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    grad_on = torch.is_grad_enabled()
    need_h = grad_on and hidden.requires_grad
    need_w = grad_on and weight.requires_grad
    loss, stats = _FusedLinearLoss.apply(hidden, weight, targets.to(hidden.device), settings, denominator,
                                         int(chunk_size), need_h, need_w)
    return loss, _stats_dict(stats)


# ------------------------------------------------------------------ checkpointed


def _chunk_fn(lm_head: Callable, settings: LossSettings):
    def fn(h_c: torch.Tensor, y_c: torch.Tensor):
        logits = lm_head(h_c)  # [c, V]
        per_token, st = token_losses(logits, y_c, settings)
        loss_sum = per_token.sum()
        with torch.no_grad():
            z = logits.detach().float()
            p = torch.softmax(z, dim=-1)
            entropy = -torch.special.xlogy(p, p).sum()
            ce_sum = st["ce_sum"]
            stats = torch.stack([ce_sum, loss_sum.detach() - ce_sum, st["masked"].float(), entropy,
                                 (z.argmax(-1) == y_c).sum().float(),
                                 torch.tensor(float(y_c.numel()), device=z.device)])
        return loss_sum, stats
    return fn


def checkpointed_lm_loss(hidden: torch.Tensor, lm_head: nn.Module, targets: torch.Tensor,
                         settings: LossSettings, denominator, chunk_size: int = 1024
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The same loss through the lm_head module itself (so its hooks run, e.g. DeepSpeed ZeRO-3's
    parameter gathering): per chunk of label rows, `checkpoint(lm_head + token_losses)`, so only
    one chunk's logits are alive at a time in forward and in backward. Same contract as
    `fused_linear_loss`; the logits are computed as lm_head computes them (e.g. bf16) and upcast
    to fp32 inside `losses.token_losses`, exactly like the reference path."""
    check_settings(settings)
    if chunk_size < 1:
        raise ValueError("chunk_size must be >= 1")
    device = hidden.device
    denom = _denominator(denominator, device)
    keep = (targets.to(device) != IGNORE_INDEX).nonzero().squeeze(1)  # [Nk]
    h_keep = hidden.index_select(0, keep)  # [Nk, H]; its backward scatters into hidden's rows
    y_keep = targets.to(device).index_select(0, keep)  # [Nk]
    fn = _chunk_fn(lm_head, settings)
    if keep.numel() == 0:  # still through lm_head, so every parameter gets a (zero) gradient
        loss, stats = fn(h_keep, y_keep)
        return loss / denom, _stats_dict(stats)
    loss = torch.zeros((), dtype=torch.float32, device=device)
    stats = torch.zeros(len(STAT_NAMES), dtype=torch.float32, device=device)
    for start in range(0, keep.numel(), chunk_size):
        loss_c, stats_c = torch.utils.checkpoint.checkpoint(
            fn, h_keep[start:start + chunk_size], y_keep[start:start + chunk_size], use_reentrant=False)
        loss = loss + loss_c
        stats = stats + stats_c
    return loss / denom, _stats_dict(stats)


# ------------------------------------------------------------------ a whole HF causal LM


def _unsupported_logits(config) -> str | None:
    """Why this config's logits are not `last_hidden_state @ lm_head.weight.T`, or None."""
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for c in configs:
        if getattr(c, "final_logit_softcapping", None) is not None:
            return f"final_logit_softcapping={c.final_logit_softcapping} (tanh soft-capping of the logits)"
        if getattr(c, "logit_scale", None) is not None:
            return f"logit_scale={c.logit_scale} (the logits are scaled)"
        if getattr(c, "logits_scaling", None) not in (None, 1, 1.0):
            return f"logits_scaling={c.logits_scaling} (the logits are divided by it)"
    return None


def final_hidden_states(forward: Callable, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
                        ) -> torch.Tensor:
    """The last hidden state [B, T, H] (after the final norm) from a causal LM's own forward.

    `forward` is the model as the trainer holds it (a DeepSpeedEngine, say), so that the wrapper's
    forward runs: DeepSpeedEngine.forward clears ZeRO's backward-seen flag and registers its
    backward hooks on the outputs (deepspeed 0.19.8 runtime/engine.py `forward`); without it ZeRO-3
    overwrites instead of accumulating the gradients of the micro-batches of one step, and skips
    its parameter prefetch. `logits_to_keep` as an empty index tensor makes the head compute no
    logits (transformers 5.17 LlamaForCausalLM.forward: `hidden_states[:, slice_indices, :]`), and
    `hidden_states[-1]` is `last_hidden_state` (transformers 5.17 utils/output_capturing.py,
    `capture_outputs`, tie_last_hidden_states)."""
    nothing = torch.empty(0, dtype=torch.long, device=input_ids.device)
    outputs = forward(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                      logits_to_keep=nothing, use_cache=False)
    if outputs.logits.shape[1] != 0:
        raise ValueError("the model ignored logits_to_keep and computed the full logits; "
                         "use loss_impl: reference")
    return outputs.hidden_states[-1]


def whole(weight: torch.Tensor):
    """A context in which a ZeRO-3-partitioned weight is whole (gathered read-only on every rank,
    released on exit: deepspeed 0.19.8 runtime/zero/partition_parameters.py GatheredParameters,
    modifier_rank=None); a no-op for a weight that is not partitioned. The fused loss needs the
    weight only inside: it computes the weight's gradient during forward and hands it to autograd
    in backward, where ZeRO-3's gradient hook on the parameter reduce-scatters it as it does the
    gradients its own module hooks produce (stage3.py `reduce_partition_and_remove_grads`)."""
    if not hasattr(weight, "ds_id"):
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters([weight], modifier_rank=None)


def lm_loss(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
            labels: torch.Tensor, settings: LossSettings, num_items_in_batch=None,
            impl: str = "fused", chunk_size: int = 1024, forward: Callable | None = None
            ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of a Hugging Face causal LM on a batch, equal to
    `losses.causal_lm_loss(model(input_ids, attention_mask).logits, labels, settings, n)` but
    without the [B, T, V] logits. labels [B, T] (-100 = ignore) are shifted inside (position t
    predicts labels[t + 1]). The denominator is num_items_in_batch when given (gradient
    accumulation: label tokens of the whole accumulated batch) else this batch's label tokens.
    impl "fused" reads the lm_head weight directly (gathered first when ZeRO-3 partitions it);
    "checkpointed" calls the lm_head module (use it when the head is wrapped or adapted).
    forward: what runs the model's forward (the trainer's wrapped model, e.g. a DeepSpeedEngine;
    see `final_hidden_states`); default the model itself."""
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r}; choose one of {', '.join(IMPLS)}")
    check_settings(settings)
    why = _unsupported_logits(model.config)
    if why is not None:
        raise ValueError(f"{type(model).__name__}: logits are not hidden @ lm_head.weight.T because of {why}; "
                         "use losses.causal_lm_loss on the model's logits instead")
    head = model.get_output_embeddings()
    if head is None:
        raise ValueError(f"{type(model).__name__} has no output embeddings (lm_head)")
    if getattr(head, "bias", None) is not None:
        raise ValueError(f"{type(model).__name__}: the lm_head has a bias; chunked losses assume logits = hidden @ W.T")
    if impl == "fused":
        weight = getattr(head, "weight", None)
        if not isinstance(head, nn.Linear) or any(True for _ in head.children()):
            raise ValueError(f"impl 'fused' reads lm_head.weight directly, but the head is a {type(head).__name__} "
                             "(wrapped or adapted); use impl='checkpointed'")
        if weight is None or (weight.dim() != 2 and not hasattr(weight, "ds_id")):
            raise ValueError(f"impl 'fused' reads lm_head.weight [V, H], but it is {weight!r}; "
                             "use impl='checkpointed'")
    hidden = final_hidden_states(forward or model, input_ids, attention_mask)  # [B, T, H]
    hidden = hidden[:, :-1, :].reshape(-1, hidden.size(-1))  # [B*(T-1), H]
    targets = labels[:, 1:].reshape(-1).to(hidden.device)  # [B*(T-1)]
    denominator = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
    if impl == "fused":
        with whole(head.weight):  # [V, H] on every rank while the loss and its gradient are computed
            loss, stats = fused_linear_loss(hidden, head.weight, targets, settings, denominator, chunk_size)
    else:
        loss, stats = checkpointed_lm_loss(hidden, head, targets, settings, denominator, chunk_size)
    return loss, stats
