"""Training-step throughput: terraloom's model vs terratorch's TerraMind, side by side.

Both models are built in this process on the same device at the same size, batch and
token budget (``../shared/anchors/terratorch_step.py`` builds terratorch's encoder-decoder
from the wheel's model files; we run it in-process and time its own ``step``), with the
same modality set: 4 pixel inputs (S2L2A, S1GRD, S1RTC, DEM) + 6 token inputs, 6 token
targets, AdamW. One step = forward, backward, optimizer update. On CPU the two are timed
in interleaved single-step rounds, alternating which goes first (the machine may be
shared); the headline is the ratio of median steps (the ratio of fastest steps is printed
too, with the load average, because a busy shared CPU inflates medians).

Reading the CPU figure: both steps do the same matmuls (same shapes, same FLOPs), and on
a CPU terratorch's eager step already spends most of its time in them, so at equal
precision the ratio is bounded by how much non-matmul time is removed (the unfused
AdamW, full-image patch embeddings, gathers of every candidate token, dense masks): about
1.4x at best on the 2-core test machine. ``--precision bf16`` runs both in bf16.

Also measured in the same run: the data loader alone (token store + corpus pixels +
masking, worker processes) on a toy world, against the samples/s the step consumes, and
model FLOP utilisation against a measured dense matmul peak (bf16 on CUDA, fp32 on CPU).

usage: python bench/train_step.py [--tt WHEEL] [--variant tiny] [--batch 8] [--device cpu]
       GPU: python bench/train_step.py --variant base --batch 128 --device cuda --compile
Last line: train_step_speedup_vs_terratorch=<ratio>
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import runpy
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from terraloom.model.config import MaskingConfig, ModelConfig, modality_specs, model_preset  # noqa: E402
from terraloom.model.masking import assemble, plan_masks  # noqa: E402
from terraloom.model.train import measure_matmul_peak  # noqa: E402
from terraloom.model.transformer import TerraloomModel  # noqa: E402

TT_VERSION = "1.2.11"
PIXELS = ("S2L2A", "S1GRD", "S1RTC", "DEM")
TOKENS = ("S2L2A", "S1GRD", "S1RTC", "DEM", "LULC", "NDVI")


def anchors_dir() -> Path:
    """``../shared/anchors`` beside the checkout, or ``$TERRALOOM_ANCHORS`` (``bench/gpu.sh``
    carries a copy to the GPU machine, where ``../shared`` does not travel)."""
    return Path(os.environ.get("TERRALOOM_ANCHORS") or ROOT.parent / "shared" / "anchors")


def terratorch_wheel(arg: str | None, cache: Path) -> Path:
    """The wheel given, or terratorch==1.2.11 downloaded (no deps) into the cache."""
    if arg:
        p = Path(arg)
        if not p.exists():
            raise SystemExit(f"--tt {arg}: no such file or directory")
        return p
    found = sorted(cache.glob(f"terratorch-{TT_VERSION}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    print(f"downloading terratorch=={TT_VERSION} (wheel only) to {cache}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            f"terratorch=={TT_VERSION}",
            "-d",
            str(cache),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    found = sorted(cache.glob(f"terratorch-{TT_VERSION}-*.whl"))
    if not found:
        raise SystemExit("pip download did not produce a terratorch wheel")
    return found[0]


def build_terratorch(anchor: Path, wheel: Path, a: argparse.Namespace) -> dict[str, Any]:
    """Run the anchor script in-process with one warm-up step; return its globals."""
    try:
        import einops  # noqa: F401
    except ImportError:
        raise SystemExit("terratorch's model needs einops: pip install einops") from None
    argv = [
        str(anchor),
        "--tt",
        str(wheel),
        "--variant",
        a.variant,
        "--batch",
        str(a.batch),
        "--enc",
        str(a.enc),
        "--dec",
        str(a.dec),
        "--steps",
        "1",
        "--warmup",
        "1",
        "--device",
        a.device,
    ]
    old = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return runpy.run_path(str(anchor), run_name="__anchor__")
    finally:
        sys.argv = old


def bench_model_config(variant: str) -> ModelConfig:
    return model_preset(variant, pixel_inputs=PIXELS, token_inputs=TOKENS, targets=TOKENS)


def synthetic_batches(
    cfg: ModelConfig, masking: MaskingConfig, batch: int, n: int = 4, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Masked batches with random codes and pixel patches (storage-free, any batch size)."""
    specs = modality_specs(cfg)
    out = []
    for k in range(n):
        rngs = [np.random.default_rng([seed, k, i]) for i in range(batch)]
        avail_in = np.ones((batch, len(specs.inputs)), bool)
        avail_t = np.ones((batch, len(specs.targets)), bool)
        plan = plan_masks(specs, masking, rngs, avail_in, avail_t, {})
        g = np.random.default_rng([seed, k])
        codes = {
            t.modality: g.integers(0, t.vocab, (batch, specs.n_image_positions))
            for t in specs.targets
        }
        pixels = {
            s.key: g.standard_normal((int(plan.n_in[:, i].sum()), s.patch_dim), np.float32)
            for i, s in enumerate(specs.inputs)
            if s.channels
        }
        out.append(assemble(specs, masking, plan, codes, pixels, torch.float32))
    return out


CPU_TIMES: dict[str, list[float]] = {"ours": [], "theirs": []}


def time_steps(fn: Any, n: int, device: torch.device, cpu_key: str | None = None) -> list[float]:
    """Wall seconds per step; with ``cpu_key`` also this process's CPU seconds per step
    (a work measure that a busy shared machine distorts less than wall time)."""
    ts = []
    for i in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        fn(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
        if cpu_key is not None:
            CPU_TIMES[cpu_key].append(time.process_time() - c)
    return ts


def loader_rate(
    cfg: ModelConfig, masking: MaskingConfig, batch: int, workers: int, n_batches: int, cache: Path
) -> float:
    """Samples/s of the real loader (token store + corpus pixels + masking) on a toy world."""
    from terraloom.model.data import MaskedBatches, TokenLoader
    from terraloom.model.testing import make_toy_world

    n = max(2 * batch, 32)
    root = cache / f"toy_world_{n}"
    if not (root / "tokens" / "train.zarr" / "zarr.json").exists() or not (root / ".done").exists():
        make_toy_world(
            root,
            n_samples=n,
            n_crops=2,
            splits=("train",),
            pixel_modalities=PIXELS,
            shard_samples=32,
        )
        (root / ".done").write_text("ok")
    ds = MaskedBatches(
        root / "tokens" / "train.zarr",
        root / "corpus" / "train.zarr",
        cfg,
        masking,
        global_batch=batch,
    )
    loader = TokenLoader(ds, num_workers=workers, prefetch_factor=4, max_batches=n_batches + 1)
    it = iter(loader)
    next(it)  # workers started
    t = time.perf_counter()
    got = sum(int(b["enc_ids"].shape[0]) for b in it)
    return got / (time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tt", help="terratorch wheel or package dir (default: download to the cache)")
    p.add_argument("--variant", default="tiny", choices=["tiny", "small", "base", "large"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--enc", type=int, default=256, help="input tokens per sample")
    p.add_argument("--dec", type=int, default=256, help="target tokens per sample")
    p.add_argument(
        "--steps", type=int, default=0, help="timed steps per round (default: 1 on CPU, 20 on CUDA)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=0,
        help="rounds; on CPU each round times both, alternating which goes first (default: 8 on CPU, 1 on CUDA)",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="autocast precision of BOTH implementations (default: bf16 on CUDA, fp32 on CPU as the anchor)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch intra-op threads (default: torch's)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile terraloom's encoder-decoder stack"
    )
    p.add_argument(
        "--workers", type=int, default=min(4, os.cpu_count() or 1), help="loader worker processes"
    )
    p.add_argument("--loader-batches", type=int, default=8)
    p.add_argument(
        "--cache",
        default=os.environ.get(
            "TERRALOOM_CACHE", str(Path(tempfile.gettempdir()) / "terraloom_bench")
        ),
    )
    a = p.parse_args(argv)
    device = torch.device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    cache = Path(a.cache)
    anchor = anchors_dir() / "terratorch_step.py"
    if not anchor.exists():
        raise SystemExit(
            f"anchor script not found at {anchor} (expected ../shared/anchors next to the repo)"
        )
    wheel = terratorch_wheel(a.tt, cache)
    rounds = a.rounds or (8 if device.type == "cpu" else 1)
    a.steps = a.steps or (1 if device.type == "cpu" else 20)
    precision = a.precision or ("bf16" if device.type == "cuda" else "fp32")
    amp: Any = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )

    masking = MaskingConfig(input_budget=a.enc, target_budget=a.dec)
    cfg = bench_model_config(a.variant)
    batches = [
        {k: v.to(device) for k, v in b.items()} for b in synthetic_batches(cfg, masking, a.batch)
    ]
    pads = [bool(b["enc_pad"].any()) for b in batches]
    torch.manual_seed(0)
    model = TerraloomModel(cfg).to(device)
    if a.compile:
        model.compile_trunk()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type in ("cuda", "cpu"))

    def ours(i: int) -> None:
        b = batches[i % len(batches)]
        with amp:
            loss = model.loss(b, enc_any_pad=pads[i % len(batches)]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    tt = build_terratorch(anchor, wheel, a)
    tt_step, tt_batches = tt["step"], tt["batches"]
    # the anchor autocasts to bf16 on CUDA only; give it the same precision as ours
    tt_step.__globals__["amp"] = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision == "bf16"
        else contextlib.nullcontext()
    )

    def theirs(i: int) -> None:
        tt_step(tt_batches[i % len(tt_batches)])

    for i in range(a.warmup):
        ours(i)
        theirs(i)
    t_ours: list[float] = []
    t_tt: list[float] = []
    if device.type == "cuda":  # sequential: both models' activations may not fit together
        for _ in range(rounds):
            t_tt += time_steps(theirs, a.steps, device)
        del tt, tt_step, tt_batches
        gc.collect()
        torch.cuda.empty_cache()
        for _ in range(rounds):
            t_ours += time_steps(ours, a.steps, device)
    else:  # interleaved, alternating order: both see the same (possibly shared) machine
        for r in range(rounds):
            if r % 2:
                t_ours += time_steps(ours, a.steps, device, "ours")
                t_tt += time_steps(theirs, a.steps, device, "theirs")
            else:
                t_tt += time_steps(theirs, a.steps, device, "theirs")
                t_ours += time_steps(ours, a.steps, device, "ours")

    b0 = batches[0]
    pixel_tokens = sum(int(v.shape[0]) for k, v in b0.items() if k.startswith("pix."))
    seg_sq = float((b0["n_tgt"].double() ** 2).sum(1).mean())
    flops = model.train_flops(a.batch, a.enc, a.dec, b0["tgt_count"].cpu(), pixel_tokens, seg_sq)
    enc_p, dec_p = model.block_params()
    anchor_flops = 6 * a.batch * (enc_p * a.enc + dec_p * a.dec)
    peak = measure_matmul_peak(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    rate = loader_rate(cfg, masking, a.batch, a.workers, a.loader_batches, cache)

    med_ours, med_tt = statistics.median(t_ours), statistics.median(t_tt)
    speedup = med_tt / med_ours
    tok = a.batch * (a.enc + a.dec)
    print(
        f"\ndevice={device} ({torch.cuda.get_device_name() if device.type == 'cuda' else f'CPU, {torch.get_num_threads()} threads'}) torch={torch.__version__}"
    )
    print(
        f"variant={a.variant} batch={a.batch} enc={a.enc} dec={a.dec} compile={a.compile} precision={precision} rounds={rounds} steps/round={a.steps} peak={peak / 1e12:.2f} TFLOP/s ({precision} matmul, measured)"
    )
    print(
        f"{'implementation':<26}{'step_s (med)':>14}{'step_s (min)':>14}{'samples/s':>12}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'anchor TFLOP/s':>16}"
    )
    for name, t, ts in (("terratorch TerraMind", med_tt, t_tt), ("terraloom", med_ours, t_ours)):
        print(
            f"{name:<26}{t:>14.4f}{min(ts):>14.4f}{a.batch / t:>12.1f}{tok / t:>12.0f}{flops / t / 1e12:>10.2f}{flops / t / peak:>8.1%}{anchor_flops / t / 1e12:>16.2f}"
        )
    print(
        f"{f'loader (alone, {a.workers} workers)':<26}{'':>14}{rate:>12.1f}{'':>12}{'':>10}{'':>8}"
    )
    print(f"loader_vs_train_step_demand={rate / (a.batch / med_ours):.1f}x  (target >= 5x)")
    print(
        f"speedup_on_min_step={min(t_tt) / min(t_ours):.2f}  load_average={os.getloadavg()[0]:.1f}"
    )
    if CPU_TIMES["ours"]:
        c_ours, c_tt = statistics.median(CPU_TIMES["ours"]), statistics.median(CPU_TIMES["theirs"])
        print(
            f"cpu_seconds_per_step terratorch={c_tt:.3f} terraloom={c_ours:.3f} cpu_time_speedup={c_tt / c_ours:.2f}"
        )
    print(f"mfu_terraloom={flops / med_ours / peak:.3f}")
    print(f"train_step_speedup_vs_terratorch={speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
