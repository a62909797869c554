"""Tests for sedsft.chunked_loss: the chunked losses equal the full-logits losses.

References: `losses.token_losses` by autograd on the full logits hidden @ weight.T (the module's
own reference path), and the float64 re-statement of the formulas in tests/loss_references.py.
Liger-Kernel style: parametrised over losses, odd shapes with ignored rows, chunk sizes that do
and do not divide the row count, fp32 and bf16 inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from loss_references import CASES, case_settings, reference_f64, reference_per_token_f64
from sedsft.chunked_loss import STAT_NAMES, checkpointed_lm_loss, fused_linear_loss, lm_loss
from sedsft.memory import LargestOutput
from sedsft.losses import LossSettings, causal_lm_loss, token_losses

IGNORE = -100
IMPLS = ("fused", "checkpointed")
SHAPES = {"41x9x37": (41, 9, 37), "64x16x130": (64, 16, 130)}  # N rows, H hidden, V vocab
CHUNKS = (1, 7, 16, 1000)
LOSS_NAMES = tuple(CASES)  # every case of every registered loss


# ------------------------------------------------------------------ float64 reference


def reference_stats_f64(z: torch.Tensor, y: torch.Tensor, s: LossSettings) -> dict[str, float]:
    """The statistics from the full logits of the label rows, float64."""
    z = z.detach().double()
    p = torch.softmax(z, -1)
    ce = -torch.log_softmax(z, -1).gather(-1, y[:, None]).squeeze(-1)
    total, mask = reference_f64(z, y, s)
    masked = int(mask.sum()) if mask is not None else 0
    return {"ce_sum": ce.sum().item(), "extra_sum": (total - ce).sum().item(), "masked": masked,
            "entropy_sum": -(p * p.log()).sum().item(), "correct": int((z.argmax(-1) == y).sum()),
            "tokens": len(y)}


# ------------------------------------------------------------------ data


def make_case(shape: str, seed: int = 0):
    """hidden [N, H], weight [V, H] exactly representable in bf16 (fp32 and bf16 runs see the
    same numbers), targets [N] with ~30 % ignored rows (including the first and last)."""
    n, h, v = SHAPES[shape]
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).bfloat16().float()
    weight = (torch.randn(v, h, generator=g) * (2.0 / h ** 0.5)).bfloat16().float()
    targets = torch.randint(0, v, (n,), generator=g)
    targets[torch.rand(n, generator=g) < 0.3] = IGNORE
    targets[0] = targets[-1] = IGNORE
    return hidden, weight, targets


def midpoint_tau(z: torch.Tensor, k: int) -> float:
    """A tau in the widest gap between top-k masses (bf16 rounding of logits cannot flip a mask)."""
    masses = sorted(torch.softmax(z.double(), -1).topk(k, -1).values.sum(-1).tolist())
    j = max(range(2, len(masses) - 1), key=lambda j: masses[j] - masses[j - 1])
    assert masses[j] - masses[j - 1] > 0.02
    return (masses[j] + masses[j - 1]) / 2


def settings_for(name: str, z_kept: torch.Tensor) -> LossSettings:
    return case_settings(name, lambda k: midpoint_tau(z_kept, k))


def kept_logits(hidden, weight, targets):
    keep = targets != IGNORE
    return (hidden.double() @ weight.double().T)[keep], targets[keep]


# ------------------------------------------------------------------ runners


def run_impl(impl, hidden, weight, targets, s, denominator, chunk_size):
    """(loss, stats, grad_hidden, grad_weight) of one implementation, inputs as given."""
    h = hidden.detach().clone().requires_grad_(True)
    if impl == "fused":
        w = weight.detach().clone().requires_grad_(True)
        loss, stats = fused_linear_loss(h, w, targets, s, denominator, chunk_size)
    else:
        head = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=weight.dtype)
        with torch.no_grad():
            head.weight.copy_(weight)
        w = head.weight
        loss, stats = checkpointed_lm_loss(h, head, targets, s, denominator, chunk_size)
    loss.backward()
    return loss, stats, h.grad, w.grad


def run_autograd_reference(hidden, weight, targets, s, denominator):
    """losses.token_losses on the full logits, plain autograd, inputs' dtype."""
    h = hidden.detach().clone().requires_grad_(True)
    w = weight.detach().clone().requires_grad_(True)
    logits = h @ w.T
    keep = targets != IGNORE
    per_token, _ = token_losses(logits[keep], targets[keep], s)
    loss = per_token.sum() / denominator
    loss.backward()
    return loss, h.grad, w.grad


def run_f64_reference(hidden, weight, targets, s, denominator):
    h = hidden.detach().double().requires_grad_(True)
    w = weight.detach().double().requires_grad_(True)
    keep = targets != IGNORE
    loss = reference_per_token_f64((h @ w.T)[keep], targets[keep], s).sum() / denominator
    loss.backward()
    return loss, h.grad, w.grad


def close(actual, expected, rtol, atol, what=""):
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


# ------------------------------------------------------------------ against the references


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("impl", IMPLS)
def test_fp32_matches_autograd_and_float64(impl, name, shape, chunk_size):
    hidden, weight, targets = make_case(shape)
    s = settings_for(name, kept_logits(hidden, weight, targets)[0])
    denom = int((targets != IGNORE).sum()) + 3  # a global batch larger than this one
    loss, stats, gh, gw = run_impl(impl, hidden, weight, targets, s, denom, chunk_size)
    assert loss.dtype == torch.float32 and gh.dtype == torch.float32 and gw.dtype == torch.float32
    ref, ref_gh, ref_gw = run_autograd_reference(hidden, weight, targets, s, denom)
    close(loss, ref, 1e-5, 1e-6, "loss vs autograd")
    close(gh, ref_gh, 1e-5, 1e-6, "grad hidden vs autograd")
    close(gw, ref_gw, 1e-5, 1e-6, "grad weight vs autograd")
    ref, ref_gh, ref_gw = run_f64_reference(hidden, weight, targets, s, denom)
    close(loss, ref, 1e-5, 1e-6, "loss vs float64")
    close(gh, ref_gh, 1e-4, 1e-6, "grad hidden vs float64")
    close(gw, ref_gw, 1e-4, 1e-6, "grad weight vs float64")
    assert gh[targets == IGNORE].abs().max() == 0  # ignored rows contribute nothing


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("impl", IMPLS)
def test_bf16_matches_autograd_and_float64(impl, name, shape, chunk_size):
    hidden, weight, targets = make_case(shape)
    s = settings_for(name, kept_logits(hidden, weight, targets)[0])
    denom = int((targets != IGNORE).sum())
    loss, stats, gh, gw = run_impl(impl, hidden.bfloat16(), weight.bfloat16(), targets, s, denom, chunk_size)
    # the loss is fp32, the gradients come back in the inputs' dtype
    assert loss.dtype == torch.float32 and gh.dtype == torch.bfloat16 and gw.dtype == torch.bfloat16
    assert torch.isfinite(loss) and torch.isfinite(gh).all() and torch.isfinite(gw).all()
    ref, ref_gh, ref_gw = run_autograd_reference(hidden.bfloat16(), weight.bfloat16(), targets, s, denom)
    # the reference rounds the logits to bf16; "fused" keeps them in fp32
    close(loss, ref, 3e-3, 1e-4, "loss vs bf16 autograd")
    close(gh, ref_gh, 5e-2, 5e-3, "grad hidden vs bf16 autograd")
    close(gw, ref_gw, 5e-2, 5e-3, "grad weight vs bf16 autograd")
    f64, f64_gh, f64_gw = run_f64_reference(hidden, weight, targets, s, denom)
    if impl == "fused":  # fp32 logits from bf16 operands: the loss is as good as in fp32
        close(loss, f64, 1e-5, 1e-6, "loss vs float64")
    else:  # bf16 logits, like the model's own lm_head
        close(loss, f64, 3e-3, 1e-4, "loss vs float64")
    close(gh, f64_gh, 5e-2, 5e-3, "grad hidden vs float64")
    close(gw, f64_gw, 5e-2, 5e-3, "grad weight vs float64")


@pytest.mark.parametrize("name", ["ce", "sed", "gem_logsigmoid", "dft"])
def test_fused_bf16_out_dtype_path(monkeypatch, name):
    """The CUDA path (bf16 operands, fp32 results via torch.mm(..., out_dtype=fp32)), emulated on
    CPU: same numbers as the fp32-upcast path, within bf16 rounding of the gradient operands."""
    from sedsft import chunked_loss
    calls = []

    def emulated(a, b):  # what the CUDA kernel computes: exact products, fp32 accumulation
        assert a.dtype == b.dtype == torch.bfloat16
        calls.append(1)
        return a.float() @ b.float()

    hidden, weight, targets = make_case("64x16x130")
    s = settings_for(name, kept_logits(hidden, weight, targets)[0])
    denom = int((targets != IGNORE).sum())
    monkeypatch.setattr(chunked_loss, "_mm_out_dtype_ok", lambda device, dtype: True)
    monkeypatch.setattr(chunked_loss, "_mm_fp32_out", emulated)
    loss, _, gh, gw = run_impl("fused", hidden.bfloat16(), weight.bfloat16(), targets, s, denom, 16)
    assert len(calls) == 3 * -(-denom // 16)  # logits, grad hidden, grad weight for each chunk
    assert gh.dtype == gw.dtype == torch.bfloat16
    f64, f64_gh, f64_gw = run_f64_reference(hidden, weight, targets, s, denom)
    close(loss, f64, 1e-5, 1e-6, "loss vs float64")
    close(gh, f64_gh, 5e-2, 5e-3, "grad hidden vs float64")
    close(gw, f64_gw, 5e-2, 5e-3, "grad weight vs float64")


def test_fused_fp16_keeps_small_gradients_until_the_loss_scale():
    # a large global batch makes every dL/dz tiny; fp16 storage before the loss scale would flush
    # them to zero, so the fused path keeps fp16 inputs' gradients in fp32 until backward
    hidden, weight, targets = make_case("41x9x37")
    s, denom, scale = LossSettings("ce"), 10 ** 7, 2.0 ** 16
    h = hidden.half().requires_grad_(True)
    w = weight.half().requires_grad_(True)
    loss, _ = fused_linear_loss(h, w, targets, s, denom, 7)
    (loss * scale).backward()
    assert h.grad.dtype == w.grad.dtype == torch.float16
    _, f64_gh, f64_gw = run_f64_reference(hidden, weight, targets, s, denom)
    close(h.grad, f64_gh * scale, 2e-2, 1e-3, "grad hidden")
    close(w.grad, f64_gw * scale, 2e-2, 1e-3, "grad weight")


@pytest.mark.parametrize("name", LOSS_NAMES)
@pytest.mark.parametrize("impl", IMPLS)
def test_stats_equal_values_from_full_logits(impl, name):
    hidden, weight, targets = make_case("64x16x130")
    z, y = kept_logits(hidden, weight, targets)
    s = settings_for(name, z)
    _, stats, _, _ = run_impl(impl, hidden, weight, targets, s, 10, 7)
    assert set(stats) == set(STAT_NAMES)
    assert all(not v.requires_grad and v.dim() == 0 for v in stats.values())
    expected = reference_stats_f64(z, y, s)
    for key in ("ce_sum", "extra_sum", "entropy_sum"):
        assert float(stats[key]) == pytest.approx(expected[key], rel=1e-5, abs=1e-5), key
    for key in ("masked", "correct", "tokens"):
        assert int(stats[key]) == expected[key], key
    if name.startswith("sed") and name != "sed_nomask":
        assert 0 < expected["masked"] < expected["tokens"]  # the mask really is on and off


def test_the_losses_really_differ():
    # guards the comparisons against an implementation that ignores its settings
    hidden, weight, targets = make_case("41x9x37")
    z, y = kept_logits(hidden, weight, targets)
    values = {n: fused_linear_loss(hidden, weight, targets, settings_for(n, z), 1)[0].item() for n in LOSS_NAMES}
    assert len({round(v, 5) for v in values.values()}) == len(values), values


# ------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("impl", IMPLS)
def test_sed_mask_edge_cases(impl):
    hidden, weight, targets = make_case("41x9x37")
    z, _ = kept_logits(hidden, weight, targets)
    top_mass = torch.softmax(z, -1).topk(2, -1).values.sum(-1)
    cases = ((LossSettings("sed", tau=float(top_mass.max()) + 1e-3), LossSettings("sed_nomask")),
             (LossSettings("sed", tau=0.0), LossSettings("ce")),
             (LossSettings("sed", tau=-1.0), LossSettings("ce")))
    for s_sed, s_other in cases:
        a = run_impl(impl, hidden, weight, targets, s_sed, 30, 7)
        b = run_impl(impl, hidden, weight, targets, s_other, 30, 7)
        close(a[0], b[0], 1e-6, 1e-7, "loss")
        close(a[2], b[2], 1e-6, 1e-7, "grad hidden")
        close(a[3], b[3], 1e-6, 1e-7, "grad weight")
        assert int(a[1]["masked"]) == (int(a[1]["tokens"]) if s_other.loss == "sed_nomask" else 0)


@pytest.mark.parametrize("denominator", [0, 5, torch.tensor(0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("impl", IMPLS)
def test_all_rows_ignored_gives_zero_not_nan(impl, dtype, denominator):
    hidden, weight, _ = make_case("41x9x37")
    targets = torch.full((hidden.shape[0],), IGNORE)
    s = LossSettings("sed", tau=0.5)
    loss, stats, gh, gw = run_impl(impl, hidden.to(dtype), weight.to(dtype), targets, s, denominator, 7)
    assert loss.item() == 0.0
    assert gh is not None and gw is not None
    assert gh.abs().max() == 0 and gw.abs().max() == 0
    assert all(float(v) == 0 for v in stats.values())


@pytest.mark.parametrize("name", ["ce", "sed", "gem_logsigmoid", "dft"])
@pytest.mark.parametrize("impl", IMPLS)
def test_half_batches_with_the_global_denominator_sum_to_the_full_batch(impl, name):
    hidden, weight, targets = make_case("64x16x130", seed=3)
    targets[5:12] = IGNORE  # halves of different sizes: a mean of means would be wrong
    s = settings_for(name, kept_logits(hidden, weight, targets)[0])
    total = int((targets != IGNORE).sum())
    full = run_impl(impl, hidden, weight, targets, s, total, 16)
    first = run_impl(impl, hidden[:25], weight, targets[:25], s, total, 16)
    second = run_impl(impl, hidden[25:], weight, targets[25:], s, torch.tensor(total), 16)
    close(first[0] + second[0], full[0], 1e-6, 1e-7, "loss")
    close(torch.cat([first[2], second[2]]), full[2], 1e-6, 1e-7, "grad hidden")
    close(first[3] + second[3], full[3], 1e-5, 1e-7, "grad weight")
    n_first = int((targets[:25] != IGNORE).sum())
    assert 0 < n_first < total and n_first * 2 != total


@pytest.mark.parametrize("impl", IMPLS)
def test_grad_output_scales_the_gradients(impl):
    hidden, weight, targets = make_case("41x9x37")
    s = LossSettings("sed_nomask")
    base = run_impl(impl, hidden, weight, targets, s, 1, 7)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    if impl == "fused":
        loss, _ = fused_linear_loss(h, w, targets, s, 1, 7)
    else:
        head = nn.Linear(w.shape[1], w.shape[0], bias=False)
        head.weight = nn.Parameter(w.detach().clone())
        w = head.weight
        loss, _ = checkpointed_lm_loss(h, head, targets, s, 1, 7)
    (-2.5 * loss).backward()
    close(h.grad, -2.5 * base[2], 1e-5, 1e-6)
    close(w.grad, -2.5 * base[3], 1e-5, 1e-6)


def test_fused_without_grad_computes_the_loss_only():
    hidden, weight, targets = make_case("41x9x37")
    s = LossSettings("gem")
    with_grad = fused_linear_loss(hidden.requires_grad_(True), weight, targets, s, 1, 7)[0]
    with torch.no_grad():
        loss, stats = fused_linear_loss(hidden, weight, targets, s, 1, 7)
    assert not loss.requires_grad and loss.item() == pytest.approx(with_grad.item(), rel=1e-6)
    assert float(stats["tokens"]) == int((targets != IGNORE).sum())
    # the weight does not require grad: only the hidden gradient is computed, and it is right
    with_grad.backward()
    assert weight.grad is None
    ref = run_autograd_reference(hidden, weight, targets, s, 1)
    close(hidden.grad, ref[1], 1e-5, 1e-6)


@pytest.mark.parametrize("settings", [LossSettings("sed"), LossSettings("kl"),
                                      LossSettings("gem", gem_weighting="cubic")])
@pytest.mark.parametrize("impl", IMPLS)
def test_bad_settings_are_refused(impl, settings):
    hidden, weight, targets = make_case("41x9x37")
    with pytest.raises(ValueError):
        run_impl(impl, hidden, weight, targets, settings, 1, 7)


# ------------------------------------------------------------------ a whole HF causal LM


def tiny_llama(tie: bool, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=50, max_position_embeddings=64,
                         tie_word_embeddings=tie)
    model = LlamaForCausalLM(config).float()
    with torch.no_grad():  # a less uniform head, so SED's mask and GEM's weights have something to do
        model.get_output_embeddings().weight.mul_(8.0)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tie
    return model


def llama_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 50, (3, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, -3:] = 0  # right padding
    labels = input_ids.clone()
    labels[:, :4] = IGNORE  # prompts
    labels[attention_mask == 0] = IGNORE
    labels[2, 7] = IGNORE
    return input_ids, attention_mask, labels


def param_grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["ce", "sed", "gem_logsigmoid", "dft"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("tie", [True, False])
def test_lm_loss_equals_causal_lm_loss_on_llama(tie, impl, name):
    model = tiny_llama(tie)
    input_ids, attention_mask, labels = llama_batch()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    keep = labels[:, 1:] != IGNORE
    s = settings_for(name, logits[:, :-1][keep])
    num_items = int(keep.sum()) + 4  # as if another micro-batch followed

    for n_items in (None, num_items):
        model.zero_grad(set_to_none=True)
        ref, ref_stats = causal_lm_loss(model(input_ids=input_ids, attention_mask=attention_mask).logits,
                                        labels, s, n_items)
        ref.backward()
        ref_grads = param_grads(model)
        model.zero_grad(set_to_none=True)
        loss, stats = lm_loss(model, input_ids, attention_mask, labels, s, num_items_in_batch=n_items,
                              impl=impl, chunk_size=5)
        loss.backward()
        grads = param_grads(model)
        assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
        assert set(grads) == set(ref_grads) and len(grads) == len(list(model.parameters()))
        for key in grads:
            close(grads[key], ref_grads[key], 1e-4, 1e-6, key)
        assert int(stats["tokens"]) == int(ref_stats["tokens"])
        assert float(stats["ce_sum"]) == pytest.approx(float(ref_stats["ce_sum"]), rel=1e-5)
        if name == "sed":
            assert int(stats["masked"]) == int(ref_stats["masked"])


def test_lm_loss_finds_the_decoder_of_llama():
    model = tiny_llama(False)
    assert model.get_decoder() is model.model  # transformers 5.17: LlamaForCausalLM -> LlamaModel


@pytest.mark.parametrize("attr, value", [("final_logit_softcapping", 30.0), ("logit_scale", 0.0625),
                                         ("logits_scaling", 8.0)])
def test_lm_loss_refuses_transformed_logits(attr, value):
    model = tiny_llama(False)
    input_ids, attention_mask, labels = llama_batch()
    setattr(model.config, attr, value)
    with pytest.raises(ValueError, match=attr):
        lm_loss(model, input_ids, attention_mask, labels, LossSettings("ce"))


@pytest.mark.parametrize("impl", IMPLS)
def test_lm_loss_refuses_a_head_bias_and_unknown_impls(impl):
    model = tiny_llama(False)
    input_ids, attention_mask, labels = llama_batch()
    model.lm_head = nn.Linear(32, 50, bias=True)
    with pytest.raises(ValueError, match="bias"):
        lm_loss(model, input_ids, attention_mask, labels, LossSettings("ce"), impl=impl)
    with pytest.raises(ValueError, match="impl"):
        lm_loss(tiny_llama(False), input_ids, attention_mask, labels, LossSettings("ce"), impl="triton")


def test_fused_refuses_a_wrapped_head():
    model = tiny_llama(False)
    input_ids, attention_mask, labels = llama_batch()
    model.lm_head = nn.Sequential(nn.Linear(32, 50, bias=False))
    model.lm_head.weight = model.lm_head[0].weight
    with pytest.raises(ValueError, match="checkpointed"):
        lm_loss(model, input_ids, attention_mask, labels, LossSettings("ce"), impl="fused")
    loss, _ = lm_loss(model, input_ids, attention_mask, labels, LossSettings("ce"), impl="checkpointed")
    assert torch.isfinite(loss)


# ------------------------------------------------------------------ memory


MEM_N, MEM_V, MEM_H, MEM_CHUNK = 2048, 8192, 64, 256


def memory_run(impl: str):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(MEM_N, MEM_H, generator=g).requires_grad_(True)
    head = nn.Linear(MEM_H, MEM_V, bias=False)
    targets = torch.randint(0, MEM_V, (MEM_N,), generator=g)
    targets[::5] = IGNORE
    s = LossSettings("sed", tau=0.5)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with LargestOutput() as mode:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if impl == "fused":
                loss, _ = fused_linear_loss(hidden, head.weight, targets, s, 100, MEM_CHUNK)
            elif impl == "checkpointed":
                loss, _ = checkpointed_lm_loss(hidden, head, targets, s, 100, MEM_CHUNK)
            else:  # the reference: full logits
                keep = targets != IGNORE
                per_token, _ = token_losses(head(hidden)[keep], targets[keep], s)
                loss = per_token.sum() / 100
        forward_largest = mode.largest
        loss.backward()
    assert hidden.grad is not None and head.weight.grad is not None
    return max(saved), forward_largest, mode.largest


@pytest.mark.parametrize("impl", IMPLS)
def test_no_full_logits_are_saved_or_created(impl):
    limit = MEM_N * MEM_V // 4
    largest_saved, largest_forward, largest_any = memory_run(impl)
    assert largest_saved < limit
    # stronger: no op output anywhere in forward or backward is larger than one chunk's logits
    assert largest_forward <= MEM_CHUNK * MEM_V and largest_any <= MEM_CHUNK * MEM_V


def test_the_reference_saves_full_logits():
    largest_saved, largest_forward, largest_any = memory_run("reference")
    kept = MEM_N - len(range(0, MEM_N, 5))
    assert largest_saved >= kept * MEM_V > MEM_N * MEM_V // 4  # the label rows' logits
    assert largest_forward >= MEM_N * MEM_V and largest_any >= MEM_N * MEM_V
