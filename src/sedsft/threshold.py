"""tau calibration: the SED mask threshold, computed once from the BASE model on validation data.

Collect the top-k probability mass at every scored position, sort ascending, and take
tau = sorted[-int(ratio * N)]: with ratio 0.7 about 30 % of tokens fall below tau.
Modes:
  consistent  k = the loss's top_k, assistant-label positions only (the default)
  upstream    k = 10 whatever the loss uses, every position (system and prompt too), the first
              100 validation sequences: the released code's behaviour, kept to reproduce it.
"""

from __future__ import annotations

from sedsft.chat import IGNORE_INDEX

# torch is imported where it is used: the CLI imports this module for its flags before it has
# chosen the process's GPUs (launch.pin_gpus)
UPSTREAM_K, UPSTREAM_SEQUENCES = 10, 100


def tau_from_masses(masses: torch.Tensor, ratio: float) -> float:
    ordered = masses.sort().values
    index = max(1, int(ratio * len(ordered)))
    return float(ordered[-index])


def calibrate(model, sequences: list[tuple[list[int], list[int]]], *, mode: str, loss_top_k: int,
              ratio: float, max_sequences: int | None, batch_size: int = 8) -> dict:
    """Returns the threshold artifact: tau, how it was computed, and the mask rate it implies."""
    import torch

    from sedsft.losses import top_k_mass

    if mode == "upstream":
        k, limit, label_only = UPSTREAM_K, UPSTREAM_SEQUENCES, False
    elif mode == "consistent":
        k, limit, label_only = loss_top_k, max_sequences, True
    else:
        raise ValueError(f"threshold.mode must be 'consistent' or 'upstream', not {mode!r}")
    sequences = sequences[:limit] if limit else sequences
    model.eval()
    device = next(model.parameters()).device
    tau_masses, loss_masses = [], []
    with torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start:start + batch_size]
            for input_ids, labels in batch:  # one at a time: no padding effects on the distribution
                ids = torch.tensor([input_ids], device=device)
                probs = torch.softmax(model(input_ids=ids).logits[0, :-1].float(), dim=-1)  # [T-1, V]
                scored = torch.tensor(labels[1:], device=device) != IGNORE_INDEX  # positions predicting a label
                tau_rows = probs[scored] if label_only else probs
                tau_masses.append(top_k_mass(tau_rows, k).cpu())
                loss_masses.append(top_k_mass(probs[scored], loss_top_k).cpu())
    tau_masses, loss_masses = torch.cat(tau_masses), torch.cat(loss_masses)
    tau = tau_from_masses(tau_masses, ratio)
    return {
        "tau": tau,
        "mode": mode,
        "tau_top_k": k,
        "loss_top_k": loss_top_k,
        "ratio": ratio,
        "sequences": len(sequences),
        "positions": int(len(tau_masses)),
        "label_only": label_only,
        # what training will see: fraction of label tokens whose loss-k mass falls below tau
        "mask_rate": float((loss_masses < tau).float().mean()),
        "mass_quantiles": {q: float(tau_masses.quantile(q)) for q in (0.1, 0.3, 0.5, 0.7, 0.9)},
    }


# ----------------------------------------------------------------------------- the threshold stage


def threshold_arguments(parser) -> None:
    parser.add_argument("--base", required=True, help="the base model (folder written by base_model, or a Hub id)")
    parser.add_argument("--val", required=True, help="sft_val.parquet (written by sft_data): the sequences tau is "
                                                     "calibrated on")


def run_threshold(args, settings: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from sedsft.config import ThresholdConfig, section
    from sedsft.sft import load_sequences

    cfg = section(settings, ThresholdConfig, "threshold")
    if cfg.tau is not None:
        return {"tau": cfg.tau, "mode": "fixed", "loss_top_k": settings["sft"]["top_k"]}
    model = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32,
                                                 trust_remote_code=settings["model"]["trust_remote_code"])
    if torch.cuda.is_available():
        model.to("cuda")
    return calibrate(model, load_sequences(args.val), mode=cfg.mode, loss_top_k=settings["sft"]["top_k"],
                     ratio=settings["sft"]["ratio"], max_sequences=cfg.max_sequences)
