"""Time and memory of the LM loss implementations (forward + backward through hidden and lm_head).

    python perf/loss.py                       # CPU-sized defaults
    python perf/loss.py --device cuda --tokens 8192 --hidden 3072 \
        --vocab 128256 --dtype bf16                           # the paper's scale (Llama-3.2-3B)

Compared, all from hidden [tokens, hidden] and an lm_head weight [vocab, hidden]:
    naive_ce          F.cross_entropy on the full fp32 logits (what HF models do)
    upstream_sed      full logits + full softmax + top-k: the reference losses.token_losses path
    fused_ce          chunked_loss.fused_linear_loss, loss "ce"
    fused_sed         chunked_loss.fused_linear_loss, loss "sed"
    checkpointed_sed  chunked_loss.checkpointed_lm_loss (lm_head module + checkpoint per chunk)
The peers a user would install instead (CE only; each skipped, with the reason, where it cannot run):
    chunked_ce        torchtune-style: the logits in 8 chunks, each upcast to fp32 for the CE
                      (torchtune CEWithChunkedOutputLoss), plain torch, any device
    liger_ce          Liger-Kernel's fused linear cross-entropy (liger-kernel 0.8.5, Triton: CUDA)
    cce_ce            Apple's Cut Cross-Entropy (cut-cross-entropy 25.1.1, Triton: CUDA)

Peak memory: on CUDA torch.cuda.max_memory_allocated during forward + backward, minus what was
allocated before (inputs, weights). On CPU there is no allocator statistic; reported instead:
    rss      growth of the process's peak resident set size (resource.getrusage ru_maxrss) over
             the first forward + backward, each method in a fresh subprocess (--no-rss skips it)
    saved    the largest tensor saved for backward (saved_tensors_hooks)
    largest  the largest tensor any op creates in forward or backward (a TorchDispatchMode):
             the full logits, or one chunk of them
Ratios are relative to naive_ce.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import gc
import os
import json
import resource
import subprocess
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

try:
    from sedsft.chunked_loss import checkpointed_lm_loss, fused_linear_loss
    from sedsft.losses import LossSettings, token_losses
    from sedsft.memory import LargestOutput
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from sedsft.chunked_loss import checkpointed_lm_loss, fused_linear_loss
    from sedsft.losses import LossSettings, token_losses
    from sedsft.memory import LargestOutput

IGNORE = -100
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_methods(args, settings: LossSettings):
    def naive_ce(h, head, y, denom):
        logits = head(h).float()
        return F.cross_entropy(logits, y, ignore_index=IGNORE, reduction="sum") / denom

    def upstream_sed(h, head, y, denom):
        keep = y != IGNORE
        per_token, _ = token_losses(head(h)[keep], y[keep], settings)
        return per_token.sum() / denom

    def fused(s):
        return lambda h, head, y, denom: fused_linear_loss(h, head.weight, y, s, denom, args.chunk_size)[0]

    def checkpointed_sed(h, head, y, denom):
        return checkpointed_lm_loss(h, head, y, settings, denom, args.chunk_size)[0]

    def chunked_ce(h, head, y, denom):
        total = h.new_zeros((), dtype=torch.float32)
        for h_c, y_c in zip(h.chunk(TORCHTUNE_CHUNKS), y.chunk(TORCHTUNE_CHUNKS)):
            total = total + F.cross_entropy(head(h_c).float(), y_c, ignore_index=IGNORE, reduction="sum")
        return total / denom

    def liger_ce(h, head, y, denom):
        # liger_kernel 0.8.5 transformers/fused_linear_cross_entropy.py: forward(lin_weight, _input, target)
        from liger_kernel.transformers.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyLoss

        return LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum")(head.weight, h, y) / denom

    def cce_ce(h, head, y, denom):
        # cut_cross_entropy 25.1.1 linear_cross_entropy.py: (e, c, targets, ignore_index, softcap, reduction)
        from cut_cross_entropy import linear_cross_entropy

        return linear_cross_entropy(h, head.weight, y, ignore_index=IGNORE, reduction="sum") / denom

    return {"naive_ce": naive_ce, "upstream_sed": upstream_sed, "fused_ce": fused(LossSettings("ce")),
            "fused_sed": fused(settings), "checkpointed_sed": checkpointed_sed, "chunked_ce": chunked_ce,
            "liger_ce": liger_ce, "cce_ce": cce_ce}


# torchtune's CEWithChunkedOutputLoss default (num_output_chunks = 8)
TORCHTUNE_CHUNKS = 8
# the Triton peers: the package each needs, and CUDA
TRITON_PEERS = {"liger_ce": "liger_kernel", "cce_ce": "cut_cross_entropy"}


def why_not(name: str, device) -> str | None:
    """Why a peer cannot run here, or None."""
    import importlib.util

    if name not in TRITON_PEERS:
        return None
    if device.type != "cuda":
        return "Triton kernels: CUDA only"
    if importlib.util.find_spec(TRITON_PEERS[name]) is None:
        return f"{TRITON_PEERS[name]} is not installed"
    return None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_once(fn, h, head, y, denom):
    h.grad = None
    head.weight.grad = None
    loss = fn(h, head, y, denom)
    loss.backward()
    return loss


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc), after handing freed heap back to the OS."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return max_rss_bytes()


def measure(name, fn, h, head, y, denom, args, device):
    run_once(fn, h[:8].detach().requires_grad_(True), head, y[:8], denom)  # lazy initialisation
    head.weight.grad = None
    gc.collect()
    rss_before = current_rss_bytes()
    run_once(fn, h, head, y, denom)  # warm-up; on CPU, in a fresh process, also the RSS peak
    rss_growth = max_rss_bytes() - rss_before
    sync(device)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        loss = run_once(fn, h, head, y, denom)
        sync(device)
        times.append(time.perf_counter() - t0)
    row = {"name": name, "time": statistics.median(times), "loss": float(loss)}
    if device.type == "cuda":
        h.grad = None
        head.weight.grad = None
        torch.cuda.empty_cache()
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        run_once(fn, h, head, y, denom)
        sync(device)
        row["peak"] = torch.cuda.max_memory_allocated(device) - base
    else:
        saved = [0]

        def pack(t):
            saved[0] = max(saved[0], t.numel() * t.element_size())
            return t

        with LargestOutput() as mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run_once(fn, h, head, y, denom)
        row["saved"], row["largest"], row["rss"] = saved[0], mode.largest_bytes, rss_growth
    return row


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--vocab", type=int, default=16384)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--chunk-size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ignored", type=float, default=0.1, help="fraction of rows with label -100")
    p.add_argument("--methods", default="naive_ce,upstream_sed,fused_ce,fused_sed,checkpointed_sed")
    p.add_argument("--no-rss", action="store_true", help="CPU: run all methods in this process, no RSS column")
    p.add_argument("--json", metavar="FILE", help="also write the rows (and the settings) as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the rows as CSV, one per method")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    dtype = DTYPES[args.dtype]
    torch.manual_seed(0)

    h = (torch.randn(args.tokens, args.hidden, device=device)).to(dtype).requires_grad_(True)
    head = nn.Linear(args.hidden, args.vocab, bias=False, device=device, dtype=dtype)
    with torch.no_grad():  # logits with std ~ 2: a spread-out but not flat distribution
        head.weight.normal_(0.0, 2.0 / args.hidden ** 0.5)
    y = torch.randint(0, args.vocab, (args.tokens,), device=device)
    y[torch.rand(args.tokens, device=device) < args.ignored] = IGNORE
    denom = int((y != IGNORE).sum())
    with torch.no_grad():  # tau: the 30th percentile of the top-2 mass (r = 0.7), as calibrated
        masses = torch.cat([torch.softmax(head(h[i:i + 64]).float(), -1).topk(2, -1).values.sum(-1)
                            for i in range(0, args.tokens, 64)])
        tau = float(masses.sort().values[int(0.3 * len(masses))])
    settings = LossSettings("sed", tau=tau, sed_lambda=1.0, top_k=2)

    methods = make_methods(args, settings)
    if args.child:  # one method in a fresh process: its RSS growth is its own
        print(json.dumps(measure(args.methods, methods[args.methods], h, head, y, denom, args, device)))
        return None
    use_rss = device.type == "cpu" and not args.no_rss
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu, '}"
          f"{'' if device.type == 'cuda' else str(torch.get_num_threads()) + ' threads'}), torch {torch.__version__}, "
          f"tokens {args.tokens}, hidden {args.hidden}, vocab {args.vocab}, {args.dtype}, chunk {args.chunk_size}, "
          f"median of {args.repeats}")
    print(f"full fp32 logits would be {fmt_bytes(args.tokens * args.vocab * 4)}")
    rows = []
    for name in args.methods.split(","):
        if name not in methods:
            sys.exit(f"--methods: unknown method {name!r}; choose from {', '.join(methods)}")
        reason = why_not(name, device)
        if reason:
            print(f"{name}: skipped ({reason})")
            continue
        if use_rss:
            child = without_options(argv, ("--methods", "--json", "--csv"))
            out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *child, "--methods", name, "--child"],
                                 check=True, capture_output=True, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            continue
        try:
            rows.append(measure(name, methods[name], h, head, y, denom, args, device))
        except torch.cuda.OutOfMemoryError:
            rows.append({"name": name, "time": float("nan"), "loss": float("nan"), "peak": float("nan")})
            torch.cuda.empty_cache()
    base = next((r for r in rows if r["name"] == "naive_ce"), rows[0])
    if device.type == "cuda":
        print("peak = torch.cuda.max_memory_allocated during forward+backward, above the inputs")
        header = f"{'method':<18}{'loss':>10}{'time ms':>10}{'x time':>8}{'peak':>12}{'x peak':>8}"
    else:
        print("CPU: no allocator peak; 'rss' = growth of peak RSS (ru_maxrss) over the first forward+backward in "
              "a fresh process, 'saved' = largest tensor saved for backward, 'largest' = largest tensor any op "
              "creates (forward or backward)")
        header = (f"{'method':<18}{'loss':>10}{'time ms':>10}{'x time':>8}"
                  + (f"{'rss':>12}{'x rss':>8}" if use_rss else "")
                  + f"{'saved':>12}{'x saved':>8}{'largest':>12}{'x largest':>10}")
    print(header)
    print("-" * len(header))
    for r in rows:
        line = f"{r['name']:<18}{r['loss']:>10.4f}{1000 * r['time']:>10.1f}{r['time'] / base['time']:>8.2f}"
        if device.type == "cuda":
            line += f"{fmt_bytes(r['peak']):>12}{r['peak'] / base['peak']:>8.2f}"
        else:
            if use_rss:
                line += f"{fmt_bytes(r['rss']):>12}{r['rss'] / max(base['rss'], 1):>8.2f}"
            line += (f"{fmt_bytes(r['saved']):>12}{r['saved'] / base['saved']:>8.2f}"
                     f"{fmt_bytes(r['largest']):>12}{r['largest'] / base['largest']:>10.2f}")
        print(line)
    write_rows(rows, args)
    return rows


def without_options(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """argv less each `--name value` and `--name=value` of `names` (a child gets its own)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{name}=" for name in names)):
            out.append(arg)
    return out


def write_rows(rows: list[dict], args) -> None:
    """The table as data: JSON (rows and the settings they were measured with) and CSV."""
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k not in ("json", "csv", "child")}
        Path(args.json).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2) + "\n")
    if args.csv:
        columns = list(dict.fromkeys(key for row in rows for key in row))
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
