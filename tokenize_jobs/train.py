"""Tokenizer training: one entry point, ``train_tokenizer(config, corpus, out)``.

Image tokenizers (FSQ-VAE) train on random crops with flips of the train split with
AdamW, linear warmup + cosine decay, gradient clipping, an EMA of the weights (the
exported weights), bf16 autocast on GPU, and single-process or ``torchrun`` DDP (each
rank samples its own shard of rows). ``ckpt.pt`` is written every ``ckpt_every`` steps;
a run that finds one resumes from it and, because the batch of a step depends only on
``(seed, step, rank)``, continues the very same trajectory. CAPTION trains a WordPiece
vocabulary; GEO has nothing to train and only writes its config, so every modality
loads the same way.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terraloom.schemas.modalities import CROP_PX, TokenizerKind, get_modality
from terraloom.storage.location import Location
from terraloom.storage.transfer import cache_dir, download_tree, upload_tree
from terraloom.tokenize_jobs.corpus_reader import CropSampler, read_texts
from terraloom.tokenize_jobs.distributed import DistInfo, init_distributed
from terraloom.tokenize_jobs.tokenizers.caption import train_wordpiece
from terraloom.tokenize_jobs.tokenizers.geo import GeoTokenizer
from terraloom.tokenize_jobs.tokenizers.image import (
    FSQVAE,
    FSQImageTokenizer,
    FSQVAEConfig,
    reconstruction_loss,
    to_model_space,
)
from terraloom.tokenize_jobs.tokenizers.io import (
    CONFIG_NAME,
    save_caption_tokenizer,
    save_geo_tokenizer,
    save_image_tokenizer,
)
from terraloom.tokenize_jobs.tokenizers.linear_init import (
    band_balance_weights,
    default_spread,
    linear_init,
)
from terraloom.tokenize_jobs.tokenizers.report import evaluate_image_tokenizer, write_report
from terraloom.tokenize_jobs.train_config import (
    TrainConfig,
    ema_decay,
    lr_factor,
)

CKPT_NAME = "ckpt.pt"
CKPT_FORMAT = "terraloom-tokenizer-ckpt"


# --------------------------------------------------------------------------- distributed


def resolve_device(device: str, dist_info: DistInfo) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info.local_rank)
        return torch.device("cpu")
    if device == "cuda" and dist_info.world > 1:
        return torch.device("cuda", dist_info.local_rank)
    return torch.device(device)


# --------------------------------------------------------------------------- checkpoints


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    ckpt: dict[str, Any] = torch.load(path, map_location=map_location, weights_only=True)
    if ckpt.get("format") != CKPT_FORMAT:
        raise ValueError(f"{path} is not a terraloom tokenizer checkpoint")
    return ckpt


def _check_resume(ckpt: dict[str, Any], config: TrainConfig, path: Path) -> None:
    saved, now = ckpt["schedule"], config.schedule_dict()
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in diff)
        raise ValueError(
            f"{path} was written by a different training configuration ({details}); "
            "use a new --out directory or the original settings"
        )


# --------------------------------------------------------------------------- image training


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _prepare_start(
    config: TrainConfig,
    cfg: FSQVAEConfig,
    model: FSQVAE,
    sampler: CropSampler,
    device: torch.device,
) -> tuple[tuple[float, ...] | None, dict[str, float] | None]:
    """Loss band weights and, for a fresh continuous tokenizer, the linear start.

    Both come from the same ``init_crops`` crops, drawn with keys no training step uses
    and independent of the rank, so every DDP rank computes the very same values (and a
    resumed run recomputes them exactly; the weights it loads then overwrite the init).
    """
    if cfg.is_classes or not (config.linear_init or config.balance_bands):
        return config.band_weights, None
    pixels = sampler.fixed_batches(-(-config.init_crops // config.batch))
    batch = to_model_space(cfg, torch.from_numpy(pixels))
    weights = config.band_weights
    if weights is None and config.balance_bands and cfg.in_channels > 1:
        w = band_balance_weights(batch.inputs, batch.mask, cfg.patch_size)
        weights = tuple(round(float(v), 6) for v in w)
    summary = None
    if config.linear_init:
        w_t = None if weights is None else torch.tensor(weights)
        summary = linear_init(
            model,
            batch.inputs.to(device),
            batch.mask.to(device),
            w_t,
            default_spread(cfg.modality) if config.init_spread is None else config.init_spread,
            config.compand_alpha,
            config.compand_uniform,
        )
    return weights, summary


def _train_image(
    config: TrainConfig, corpus: Location, out: Path, stop_at_step: int | None
) -> Path:
    from tqdm import tqdm

    dist_info = init_distributed(
        nccl=torch.cuda.is_available() and config.device in ("auto", "cuda")
    )
    device = resolve_device(config.device, dist_info)
    torch.manual_seed(config.seed)
    cfg = config.model_config()
    model = FSQVAE(cfg).to(device)
    sampler = CropSampler(
        corpus,
        config.train_split,
        config.modality,
        crop_px=config.crop_px,
        batch_size=config.batch,
        seed=config.seed,
        rank=dist_info.rank,
        world_size=dist_info.world,
        flips=config.flips,
        cache_bytes=config.cache_bytes,
    )
    band_weights, init_summary = _prepare_start(config, cfg, model, sampler, device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=config.lr,
        betas=(config.beta1, config.beta2),
        weight_decay=config.weight_decay,
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, config))
    start, history = 0, []
    ckpt_path = out / CKPT_NAME
    if ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path, device)
        _check_resume(ckpt, config, ckpt_path)
        model.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        start, history = int(ckpt["step"]), list(ckpt["history"])
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
    net: torch.nn.Module = model
    if dist_info.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    entropy_weight = config.resolved_entropy_weight()
    use_amp = config.amp and device.type == "cuda"
    end = config.steps if stop_at_step is None else min(config.steps, stop_at_step)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(
        total=config.steps,
        initial=start,
        desc=f"train {config.modality}",
        disable=not (config.progress and dist_info.is_main),
        dynamic_ncols=True,
    )
    t0, step = time.perf_counter(), start
    for step in range(start, end):
        pixels, _ = sampler.batch(step)
        batch = to_model_space(cfg, torch.from_numpy(pixels).to(device))
        net.train()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            recon, _, z = net(batch.inputs)
        recon_loss = reconstruction_loss(cfg, recon, batch, band_weights)
        loss = recon_loss
        if entropy_weight:
            ent = model.fsq.entropy_loss(
                z.permute(0, 2, 3, 1), config.entropy_temperature, joint=config.entropy_joint
            )
            loss = loss + entropy_weight * ent
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = ema_decay(step, config)
            for p_ema, p in zip(ema.parameters(), model.parameters()):
                p_ema.lerp_(p, 1.0 - decay)
            for b_ema, b in zip(ema.buffers(), model.buffers()):
                b_ema.copy_(b)
        value = recon_loss.detach()  # the logged loss is the reconstruction loss
        if dist_info.world > 1:
            import torch.distributed as dist

            dist.all_reduce(value)
            value /= dist_info.world
        history.append(float(value))
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]:.4f}", lr=f"{sched.get_last_lr()[0]:.2e}")
        done = step + 1
        if done % config.ckpt_every == 0 or done == config.steps:
            if dist_info.is_main:
                _atomic_save(
                    {
                        "format": CKPT_FORMAT,
                        "schedule": config.schedule_dict(),
                        "model": model.state_dict(),
                        "ema": ema.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict(),
                        "step": done,
                        "history": history,
                        "rng": {"torch": torch.get_rng_state()},
                    },
                    ckpt_path,
                )
            dist_info.barrier()
    bar.close()
    elapsed = time.perf_counter() - t0
    finished = (stop_at_step is None or stop_at_step >= config.steps) and len(
        history
    ) >= config.steps
    if dist_info.is_main:
        run_steps = max(end - start, 0)
        _write_json(
            out / "train_log.json",
            {
                "modality": config.modality,
                "steps_done": len(history),
                "steps": config.steps,
                "loss": history,
                "last_run": {
                    "from_step": start,
                    "to_step": end,
                    "seconds": elapsed,
                    "samples_per_s": run_steps
                    * config.batch
                    * dist_info.world
                    / max(elapsed, 1e-9),
                },
            },
        )
        if finished:
            training = {
                **asdict(config),
                "effective_band_weights": band_weights,
                "linear_init_fit": init_summary,
                "corpus": corpus.name,
                "final_loss": history[-1] if history else None,
            }
            identity = save_image_tokenizer(ema, out, training=json.loads(json.dumps(training)))
            tok = FSQImageTokenizer(ema, identity)
            try:
                evaluate_image_tokenizer(
                    tok,
                    corpus,
                    config.eval_split,
                    config.eval_samples,
                    config.eval_crops,
                    CROP_PX,
                    config.eval_batch,
                    out,
                )
            except FileNotFoundError as exc:
                (out / "eval.md").write_text(f"No evaluation: {exc}\n", encoding="utf-8")
    dist_info.barrier()
    return out


# --------------------------------------------------------------------------- sequences


def _train_caption(config: TrainConfig, corpus: Location, out: Path) -> Path:
    texts = read_texts(corpus, config.train_split)
    if not texts:
        raise ValueError(f"split {config.train_split!r} of {corpus} holds no captions")
    tok = train_wordpiece(texts, config.vocab_size, config.n_sentinels)
    training = {**asdict(config), "corpus": corpus.name, "n_captions": len(texts)}
    save_caption_tokenizer(tok, out, training=json.loads(json.dumps(training)))
    try:
        val = read_texts(corpus, config.eval_split)
    except FileNotFoundError:
        val = []
    if val:
        ids, lengths = tok.encode_batch(val, max_len=4096)
        back = tok.decode_batch(ids, lengths)
        n_tok = (lengths - 2).double()
        unk = int((ids == tok.unk_id).sum())
        report = {
            "modality": "CAPTION",
            "split": config.eval_split,
            "n_samples": len(val),
            "identity": tok.identity,
            "trained_vocab_size": tok.trained_vocab_size,
            "vocab_size": tok.vocab_size,
            "round_trip_exact": float(np.mean([a == b for a, b in zip(val, back)])),
            "tokens_per_caption_mean": float(n_tok.mean()),
            "tokens_per_caption_max": int(n_tok.max()),
            "unk_fraction": unk / max(float(n_tok.sum()), 1.0),
        }
        write_report(report, out)
    return out


def _train_geo(config: TrainConfig, corpus: Location, out: Path) -> Path:
    tok = GeoTokenizer()
    save_geo_tokenizer(tok, out)
    from terraloom.tokenize_jobs.corpus_reader import open_split, read_rows, valid_rows

    try:
        group = open_split(corpus, config.eval_split)
    except FileNotFoundError:
        return out
    latlon = read_rows(group, "GEO", valid_rows(group))
    if len(latlon):
        back = tok.decode(tok.encode(latlon)).numpy()
        dlon = np.abs((back[:, 1] - latlon[:, 1] + 180) % 360 - 180)
        write_report(
            {
                "modality": "GEO",
                "split": config.eval_split,
                "n_samples": len(latlon),
                "identity": tok.identity,
                "max_error_lat_deg": float(np.abs(back[:, 0] - latlon[:, 0]).max()),
                "max_error_lon_deg": float(dlon.max()),
            },
            out,
        )
    return out


def train_tokenizer(
    config: TrainConfig,
    corpus: str | os.PathLike[str] | Location,
    out: str | os.PathLike[str] | Location,
    *,
    stop_at_step: int | None = None,
) -> Path | Location:
    """Train (or resume, or just write) the tokenizer of ``config.modality``; return ``out``.

    ``out`` receives ``config.json`` plus ``model.safetensors`` (image, EMA weights),
    ``tokenizer.json`` (CAPTION) or nothing more (GEO), the checkpoint ``ckpt.pt``,
    ``train_log.json`` and the evaluation report ``eval.{json,md,png}`` on
    ``config.eval_split``. ``stop_at_step`` ends the run early at that step, as an
    interruption would (the tokenizer is exported only when all steps are done).

    ``corpus`` and ``out`` may be locations (``s3://...``): the corpus is read through zarr's
    store for it; a remote ``out`` is staged in the local cache (what is already there is
    fetched first, so a run resumes from its ``ckpt.pt``) and published when the run ends,
    ``config.json`` last: a tokenizer folder is loadable only once its weights are complete.
    """
    corpus_loc, out_loc = Location.parse(corpus), Location.parse(out)
    if out_loc.is_local:
        return _train_into(config, corpus_loc, out_loc.local_path, stop_at_step)
    if out_loc.read_only:
        raise ValueError(f"{out_loc} is read-only ({out_loc.scheme}://)")
    stage = cache_dir(out_loc, "tokenizer-runs")
    download_tree(out_loc, stage)
    _train_into(config, corpus_loc, stage, stop_at_step)
    if int(os.environ.get("RANK", "0")) == 0:
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        upload_tree(stage, out_loc, [f for f in files if f != CONFIG_NAME])
        if CONFIG_NAME in files:
            upload_tree(stage, out_loc, [CONFIG_NAME])
    return out_loc


def _train_into(config: TrainConfig, corpus: Location, out: Path, stop_at_step: int | None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    kind = get_modality(config.modality).tokenizer
    if kind in (TokenizerKind.FSQ_VAE, TokenizerKind.FSQ_VAE_CLASSES):
        return _train_image(config, corpus, out, stop_at_step)
    if kind is TokenizerKind.WORDPIECE:
        return _train_caption(config, corpus, out)
    if kind is TokenizerKind.GEO_BINS:
        return _train_geo(config, corpus, out)
    raise ValueError(f"{config.modality} has no tokenizer to train")
