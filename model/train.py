"""The training loop: one lean loop for a single process, ``torchrun`` DDP and FSDP.

AdamW (fused where supported), linear warmup + cosine decay, gradient clipping, bf16
autocast on CUDA, optional ``torch.compile`` of the static encoder-decoder stack and
activation checkpointing. Checkpoints every N steps (weights, optimizer, loader position,
RNG) resume bit-exactly on CPU. Logs the loss per modality, tokens/s, samples/s and model
FLOP utilisation to stdout, a CSV file and optionally TensorBoard; evaluates on val.

The data-parallel loss is normalised by the *global* token count of each modality (one
tiny all-reduce per step), so a DDP step equals a single-process step on the same global
batch, whatever the per-rank modality mix.
"""

from __future__ import annotations

import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from terraloom.model.checkpoint import (
    anchored_data,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    unwrap,
)
from terraloom.model.config import TrainConfig, save_config
from terraloom.model.data import MaskedBatches, TokenLoader, local_root, split_path
from terraloom.model.metrics_log import MetricsLog
from terraloom.model.order import TooFewRowsError
from terraloom.model.ordinal import run_ordinal_targets
from terraloom.model.rundir import RunDir
from terraloom.model.transformer import TerraloomModel
from terraloom.tokenize_jobs.distributed import DistInfo, init_distributed


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device 'cuda' requested but CUDA is not available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``lr * min_lr_ratio`` at ``cfg.steps``."""
    o = cfg.optim
    if o.warmup_steps > 0 and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, cfg.steps - o.warmup_steps)
    t = min(1.0, (step - o.warmup_steps) / span)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay for norms, biases, and the position-free modality/mask embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or ".modality." in name or name.endswith("modality.weight"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, device: torch.device, fsdp: bool
) -> torch.optim.Optimizer:
    o = cfg.optim
    fused = device.type in ("cuda", "cpu") and not fsdp
    return torch.optim.AdamW(
        param_groups(model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps, fused=fused
    )


def measure_matmul_peak(
    device: torch.device, dtype: torch.dtype | None = None, n: int | None = None, reps: int = 10
) -> float:
    """Measured dense matmul FLOP/s (the MFU denominator): bf16 on CUDA, fp32 on CPU.

    The fastest of ``reps`` timed products, so a busy shared machine does not lower it.
    """
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        _sync(device)
        t = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wrap_model(
    model: TerraloomModel, cfg: TrainConfig, info: DistInfo, device: torch.device
) -> tuple[nn.Module, str]:
    """DDP / FSDP wrapping; returns the module to call and the mode used."""
    mode = cfg.parallel
    if mode == "auto":
        mode = "none" if info.world == 1 else ("fsdp" if cfg.model.dim >= 1024 else "ddp")
    if info.world == 1 and mode in ("ddp", "fsdp"):
        mode = "none"
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None), mode
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for blk in [*model.encoder, *model.decoder]:
            fully_shard(blk)
        fully_shard(model)
        return model, mode
    return model, "none"


def precision_of(cfg: TrainConfig, device: torch.device) -> str:
    """The autocast precision, bf16 or fp32 (``auto``: bf16 on CUDA, fp32 on CPU)."""
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


def autocast_for(cfg: TrainConfig, device: torch.device) -> Any:
    if precision_of(cfg, device) == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@dataclass
class TrainResult:
    out_dir: Path
    steps_done: int
    #: Global loss of every step this process ran (first step first).
    losses: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)


def _to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _mean_over_modalities(mod_sum: torch.Tensor, count: torch.Tensor) -> float:
    present = count > 0
    if not present.any():
        return float("nan")
    return float((mod_sum[present] / count[present]).mean())


def evaluate(
    model: nn.Module,
    loader: TokenLoader,
    cfg: TrainConfig,
    device: torch.device,
    info: DistInfo,
    *,
    replicated: bool = False,
) -> dict[str, float | None]:
    """Mean-over-modalities cross-entropy on ``loader``'s batches, plus per-modality values
    (None for a modality that got no targets).

    ``replicated``: every rank evaluates the same whole batches (a split smaller than the
    world size), so the sums are not all-reduced.
    """
    core = unwrap(model)
    assert isinstance(core, TerraloomModel)
    names = [t.modality for t in core.specs.targets]
    tot = torch.zeros(len(names), dtype=torch.float64, device=device)
    cnt = torch.zeros(len(names), dtype=torch.float64, device=device)
    was = model.training
    model.eval()
    with torch.no_grad():
        for batch in loader:
            any_pad = bool(batch["enc_pad"].any())
            b = _to_device(batch, device)
            with autocast_for(cfg, device):
                _, s, c = model(b, enc_any_pad=any_pad)
            tot += s.double()
            cnt += c.double()
    if info.world > 1 and not replicated:
        dist.all_reduce(tot)
        dist.all_reduce(cnt)
    model.train(was)
    out: dict[str, float | None] = {"loss": _mean_over_modalities(tot.cpu(), cnt.cpu())}
    for j, n in enumerate(names):
        out[f"loss/{n}"] = float(tot[j] / cnt[j]) if cnt[j] > 0 else None
    return out


def _dataset(
    cfg: TrainConfig,
    split: str,
    rank: int,
    world: int,
    *,
    shrink_batch: bool = False,
    seed_offset: int = 0,
    storage_options: dict[str, Any] | None = None,
) -> MaskedBatches:
    d = cfg.data
    if not d.tokens:
        raise ValueError("data.tokens (token-store root) is not set")
    # a URL is read through the local cache (fetched once); a local root is used in place
    return MaskedBatches(
        split_path(local_root(d.tokens, "tokens", storage_options), split),
        split_path(local_root(d.corpus, "corpus", storage_options), split) if d.corpus else None,
        cfg.model,
        cfg.masking,
        global_batch=cfg.batch_size,
        seed=cfg.seed + seed_offset,
        rank=rank,
        world=world,
        pixel_dtype=getattr(torch, d.pixel_dtype),
        shrink_batch=shrink_batch,
        order=d.order,  # type: ignore[arg-type]  # checked by DataConfig
        shuffle_buffer=d.shuffle_buffer,
    )


def _token_loader(
    ds: MaskedBatches, cfg: TrainConfig, device: torch.device, max_batches: int | None = None
) -> TokenLoader:
    d = cfg.data
    return TokenLoader(
        ds,
        num_workers=d.num_workers,
        prefetch_factor=d.prefetch_factor,
        pin_memory=d.pin_memory and device.type == "cuda",
        max_batches=max_batches,
    )


@dataclass(frozen=True)
class ValPlan:
    """How this run validates: the dataset (None: no validation) and whether every rank
    evaluates the whole split (``replicated``) instead of its share."""

    dataset: MaskedBatches | None
    replicated: bool = False
    note: str = ""


def plan_validation(
    cfg: TrainConfig, info: DistInfo, storage_options: dict[str, Any] | None = None
) -> ValPlan:
    """Open the val split before training so a run never dies at its last evaluation.

    A split smaller than one global batch gets one smaller batch; one with fewer valid rows
    than data-parallel ranks is evaluated whole on every rank (identical results, no
    reduction); an empty one turns validation off. Any other defect (missing modalities,
    wrong crop size) is an error before training.
    """
    if not cfg.eval_every:
        return ValPlan(None)
    opts = storage_options
    path = split_path(local_root(cfg.data.tokens, "tokens", opts), cfg.data.val_split)
    if not path.exists():
        return ValPlan(None)
    try:
        ds = _dataset(
            cfg,
            cfg.data.val_split,
            info.rank,
            info.world,
            shrink_batch=True,
            seed_offset=1,
            storage_options=opts,
        )
        return ValPlan(ds)
    except TooFewRowsError:
        pass
    try:
        ds = _dataset(
            cfg, cfg.data.val_split, 0, 1, shrink_batch=True, seed_offset=1, storage_options=opts
        )
    except TooFewRowsError:
        return ValPlan(None, note=f"validation off: {path} has no valid rows")
    n = len(ds.order.rows)
    return ValPlan(
        ds,
        replicated=True,
        note=f"{path} has {n} valid rows, fewer than the {info.world} ranks: every rank evaluates all of them",
    )


def load_init_weights(model: TerraloomModel, path: str) -> None:
    """Load ``model.safetensors`` of ``path`` (weights dir, or run dir: its latest checkpoint)
    strictly into ``model``; a missing or mismatching source is one ``ValueError`` line."""
    from safetensors.torch import load_file

    src = Path(path)
    if not (src / "model.safetensors").exists():
        ckpt = latest_checkpoint(src) if src.is_dir() else None
        if ckpt is None:
            raise ValueError(f"--init {path}: no model.safetensors and no checkpoint there")
        src = ckpt
    try:
        model.load_state_dict(load_file(str(src / "model.safetensors")), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise ValueError(
            f"--init {path}: weights do not fit the run's model config ({first[0] if first else exc}); "
            "use the config.json next to them"
        ) from None


def train(
    cfg: TrainConfig,
    *,
    resume: bool = True,
    max_steps: int | None = None,
    progress: bool = True,
    echo: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> TrainResult:
    """Run (or resume) training as configured; returns what this process observed.

    ``max_steps`` stops early (the schedule still follows ``cfg.steps``), which is how a
    run is interrupted in tests; ``resume`` continues from the newest checkpoint of
    ``cfg.out_dir``.

    ``cfg.out_dir``, ``cfg.data.tokens`` and ``cfg.data.corpus`` may be URLs (``s3://...``,
    with ``storage_options`` for their backend): the data is read through the local cache
    (``model.data.local_root``) and a remote run directory is staged locally and published
    by checkpoint (``model.rundir``).
    """
    if max_steps is not None and max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if cfg.steps < 1:
        raise ValueError(f"steps must be >= 1, got {cfg.steps}: a run of no steps trains nothing")
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    info = init_distributed(nccl=device.type == "cuda")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.seed)
    run = RunDir.open(cfg.out_dir, storage_options)  # a malformed URL: one line, nothing written
    out_dir = run.local
    # validate the data first: nothing is written for a run that cannot start
    loader = _token_loader(
        _dataset(cfg, cfg.data.train_split, info.rank, info.world, storage_options=storage_options),
        cfg,
        device,
    )
    val_plan = plan_validation(cfg, info, storage_options)
    if echo and info.is_main and val_plan.note:
        print(val_plan.note)
    if run.remote:
        if info.is_main:
            run.pull(resume)  # the stage starts as what the bucket holds (resume from its latest)
        info.barrier()
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(anchored_data(cfg), out_dir / "config.yaml")
        run.push_files("config.yaml")
    init = bool(cfg.init_from) and not (resume and latest_checkpoint(out_dir) is not None)
    model = TerraloomModel(cfg.model, init=not init).to(device)
    model.set_ordinal_targets(
        run_ordinal_targets(
            cfg.model.targets, cfg.ordinal_sigma, cfg.data.tokens, loader.dataset.fsq_groups
        )
    )
    if init:
        load_init_weights(model, cfg.init_from)
        if echo and info.is_main:
            print(f"initialised from {cfg.init_from}")
    model.activation_checkpointing = cfg.activation_checkpointing
    if cfg.compile:
        model.compile_trunk()
    wrapped, mode = wrap_model(model, cfg, info, device)
    optimizer = make_optimizer(wrapped, cfg, device, fsdp=mode == "fsdp")

    start = 0
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, wrapped, optimizer)
        start = int(state["step"])
        if state.get("loader"):
            loader.load_state_dict(state["loader"])
        if echo and info.is_main:
            print(f"resumed from {ckpt} at step {start}")

    peak = (
        cfg.peak_tflops * 1e12
        if cfg.peak_tflops > 0
        else measure_matmul_peak(
            device, torch.bfloat16 if precision_of(cfg, device) == "bf16" else torch.float32
        )
    )
    log = MetricsLog(out_dir, cfg.csv_log, cfg.tensorboard) if info.is_main else None
    if log is not None:
        log.truncate(start)  # rows logged after the checkpoint are replayed below
    names = [t.modality for t in model.specs.targets]
    end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    if start >= end and echo and info.is_main:
        print(f"nothing to train: {out_dir} is at step {start}, the run stops at step {end}")
    result = TrainResult(out_dir, start)
    bar = None
    if progress and info.is_main and end > start:
        from tqdm import tqdm

        bar = tqdm(total=end - start, initial=0, desc="train", unit="step")

    win_losses: list[torch.Tensor] = []
    win_sum = torch.zeros(len(names), dtype=torch.float64, device=device)
    win_cnt = torch.zeros(len(names), dtype=torch.float64, device=device)
    win_flops, win_samples, win_tokens, win_steps = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    step = start
    it = iter(loader)
    wrapped.train()
    while step < end:
        batch = next(it)
        any_pad = bool(batch["enc_pad"].any())
        n_tgt = batch["n_tgt"].numpy()
        seg_sq = float((n_tgt.astype(np.float64) ** 2).sum(1).mean())
        pixel_tokens = sum(int(v.shape[0]) for k, v in batch.items() if k.startswith("pix."))
        b_local, n_in = batch["enc_ids"].shape
        n_t = batch["tgt_ids"].shape[1]
        flops = model.train_flops(b_local, n_in, n_t, batch["tgt_count"], pixel_tokens, seg_sq)
        b = _to_device(batch, device)
        lr = lr_at(step, cfg)
        for g in optimizer.param_groups:
            g["lr"] = lr
        count = b["tgt_count"]
        if info.world > 1:
            count = count.clone()
            dist.all_reduce(count)
        with autocast_for(cfg, device):
            loss, mod_sum, _ = wrapped(
                b, enc_any_pad=any_pad, global_count=count, scale=float(info.world)
            )
        loss.backward()
        gnorm = (
            torch.nn.utils.clip_grad_norm_(wrapped.parameters(), cfg.optim.clip_grad)
            if cfg.optim.clip_grad > 0
            else None
        )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1

        win_losses.append(loss.detach().double() / info.world)
        win_sum += mod_sum.double()
        win_cnt += b["tgt_count"].double()
        win_flops += flops
        win_samples += b_local
        win_tokens += b_local * (n_in + n_t)
        win_steps += 1
        if bar is not None:
            bar.update(1)
        if step % cfg.log_every == 0 or step == end:
            step_losses = torch.stack(win_losses)
            if info.world > 1:
                for t in (step_losses, win_sum, win_cnt):
                    dist.all_reduce(t)
            _sync(device)
            dt = time.perf_counter() - t0
            result.losses.extend(step_losses.tolist())
            mean_loss = float(step_losses.mean())
            row: dict[str, Any] = {
                "step": step,
                "split": "train",
                "loss": mean_loss,
                "lr": lr,
                "grad_norm": float(gnorm) if gnorm is not None else float("nan"),
                "samples_per_s": win_samples * info.world / dt,
                "tokens_per_s": win_tokens * info.world / dt,
                "mfu": win_flops * info.world / dt / peak,
            }
            cnt = win_cnt.cpu()
            for j, n in enumerate(names):  # absent (blank) when the modality had no targets
                row[f"loss/{n}"] = float(win_sum[j] / cnt[j]) if cnt[j] > 0 else None
            result.history.append(row)
            if log is not None:
                log.write(row)
                run.push_files("metrics.csv")
            if echo and info.is_main:
                mods = " ".join(
                    f"{n}={row[f'loss/{n}']:.3f}" for n in names if row[f"loss/{n}"] is not None
                )
                msg = f"step {step} loss {mean_loss:.4f} lr {lr:.2e} {row['samples_per_s']:.1f} samples/s {row['tokens_per_s']:.0f} tok/s mfu {row['mfu']:.1%} | {mods}"
                (bar.write if bar is not None else print)(msg)
            win_losses = []
            win_sum.zero_()
            win_cnt.zero_()
            win_flops, win_samples, win_tokens, win_steps = 0.0, 0, 0, 0
            t0 = time.perf_counter()
        # the checkpoint first: a failing evaluation never costs the steps before it
        if cfg.ckpt_every and (step % cfg.ckpt_every == 0 or step == end):
            path = save_checkpoint(
                out_dir,
                step,
                wrapped,
                optimizer,
                cfg,
                loader.state_dict(),
                rank=info.rank,
                keep=cfg.keep_ckpts,
            )
            result.checkpoints.append(path)
            if info.is_main:
                run.push_checkpoint(path, cfg.keep_ckpts)  # a no-op for a local run
            t0 = time.perf_counter()
        if val_plan.dataset is not None and (step % cfg.eval_every == 0 or step == end):
            val = evaluate(
                wrapped,
                _token_loader(val_plan.dataset, cfg, device, max_batches=cfg.eval_batches),
                cfg,
                device,
                info,
                replicated=val_plan.replicated,
            )
            vrow = {"step": step, "split": "val", **val}
            result.history.append(vrow)
            if log is not None:
                log.write(vrow)
                run.push_files("metrics.csv")
            if echo and info.is_main:
                (bar.write if bar is not None else print)(f"step {step} val loss {val['loss']:.4f}")
            t0 = time.perf_counter()
    if bar is not None:
        bar.close()
    result.steps_done = step
    return result
