"""The CUDA paths of training (run by ``bench/gpu.sh`` on a GPU machine; skipped without one).

CI has no GPU, so these run only where ``torch.cuda.is_available()``; the CPU suite covers the
same loop, and these check what only a GPU exercises: bf16 autocast, CUDA kernels, compile.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from terraloom.model.config import OptimConfig
from terraloom.model.train import train

pytestmark = pytest.mark.gpu


def test_cuda_fp32_steps_match_the_cpu_steps(train_config, tmp_path) -> None:
    cpu = train(
        train_config(tmp_path / "cpu", steps=3, device="cpu", precision="fp32"),
        progress=False,
        echo=False,
    )
    gpu = train(
        train_config(tmp_path / "gpu", steps=3, device="cuda", precision="fp32"),
        progress=False,
        echo=False,
    )
    np.testing.assert_allclose(gpu.losses, cpu.losses, rtol=2e-3)


@pytest.mark.parametrize("compile_model", [False, True])
def test_cuda_bf16_training_learns(train_config, tmp_path, compile_model: bool) -> None:
    cfg = train_config(
        tmp_path,
        steps=24,
        log_every=4,
        eval_every=24,
        eval_batches=1,
        device="cuda",
        precision="bf16",
        compile=compile_model,
        optim=OptimConfig(lr=5e-3, warmup_steps=2),
    )
    losses = np.array(train(cfg, progress=False, echo=False).losses)
    assert np.isfinite(losses).all()
    assert losses[-4:].mean() < losses[:2].mean() - 1.0
    assert torch.cuda.max_memory_allocated() > 0
