"""What only a CUDA GPU can show (skipped elsewhere; scripts/gpu_check.sh runs it): ZeRO-3 with
gradient accumulation on one GPU, in bf16, against the same global batch without accumulation.
With the engine's forward bypassed (the bug this guards), the first step's gradient is the last
micro-batch's alone, and its norm is far from the whole batch's."""

from __future__ import annotations

import pytest
import torch

from test_deepspeed_cpu import GLOBAL_BATCH, logged, prepared, train  # noqa: F401 (prepared: a fixture)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_zero3_accumulation_on_one_gpu_matches_one_big_batch(prepared):  # noqa: F811
    whole = train(prepared, "gpu_zero3_acc1", "zero3", 1, 1)
    accumulated = train(prepared, "gpu_zero3_acc4", "zero3", 1, 4)
    assert whole["world_size"] == accumulated["world_size"] == 1 and GLOBAL_BATCH % 4 == 0
    assert accumulated["partitioned_at_load"] is True
    # bf16 compute: a looser tolerance than on CPU, still far tighter than one micro-batch's gradient
    assert logged(accumulated, "grad_norm")[0] == pytest.approx(logged(whole, "grad_norm")[0], rel=3e-2)
    assert logged(accumulated, "loss") == pytest.approx(logged(whole, "loss"), rel=3e-2)
