"""The main job: the whole mission on the embedded synthetic world, stage by stage.

registry -> world (``demo`` preset) -> plan -> build (Beam) -> tokenizers -> encode ->
train -> TiM -> evaluate -> generate -> report. Each stage writes its outputs under
``--out`` and a ``.<stage>.done`` marker (its JSON summary) last, so a second ``make demo``
skips what is finished and a killed run resumes at the stage it was in (the stages
themselves resume too: the build and the encode job skip committed shards, tokenizer and
model training continue from their checkpoints).

Budgets (steps, widths, crops) live in :class:`DemoConfig`; ``--quick`` selects a tiny
world and minimal budgets (the end-to-end test), the default fits the 20-minute budget of
a 2-core CPU machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from terraloom.schemas.cli import modality_table
from terraloom.schemas.cliargs import add_config_args, add_version, config_from_args
from terraloom.schemas.jsonschema import out_of_sync
from terraloom.schemas.modalities import REGISTRY

#: Modalities the demo tokenizes and models (S1RTC and NDVI are built but not tokenized:
#: the evaluation and TiM tasks do not need them and CPU minutes are scarce).
IMAGE_TOKENS = ("S2L2A", "S1GRD", "DEM", "LULC")
SEQUENCE_TOKENS = ("GEO",)


def plain_tokenizer_start(modality: str) -> dict[str, Any]:
    """TrainConfig overrides of the plain start (``DemoConfig.tok_linear_start=False``)."""
    return {
        "linear_init": False,
        "balance_bands": False,
        "linear_paths": False,
        "fsq_groups": (3, 1, 1) if modality == "DEM" else (),
    }


@dataclass(frozen=True)
class DemoConfig:
    """Every budget of the main job (the fingerprint of an output directory)."""

    world_preset: str = "demo"
    #: Use the shared world cache (``pipeline.world.cached_world``) instead of ``<out>/world``.
    world_cache: bool = False
    seed: int = 0
    workers: int = 2
    # plan
    samples_per_cell: int = 9
    val_fraction: float = 0.15
    # tokenizers (FSQ-VAE): steps, batch and crop size of training, net width
    tok_steps: int = 200
    tok_batch: int = 16
    tok_crop: int = 64
    tok_width: int = 32
    tok_channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    #: The first halvings as pixel-unshuffles (much cheaper convolutions at high resolution).
    tok_unshuffle: int = 2
    tok_lr: float = 2e-3
    #: FSQ codebook-usage regulariser; off for the demo's short model budget (why:
    #: docs/bench.md, "Measured choices behind defaults").
    tok_entropy_weight: float = 0.0
    #: False: the plain start (random init); True: the linear start of
    #: ``tokenize_jobs.tokenizers.linear_init`` (why the demo keeps the plain one:
    #: docs/bench.md).
    tok_linear_start: bool = False
    tok_eval_samples: int = 8
    # encode: crops per sample and crop size (= the model's image size)
    n_crops: int = 2
    crop_px: int = 128
    # model
    dim: int = 128
    enc_depth: int = 4
    dec_depth: int = 2
    heads: int = 4
    input_budget: int = 128
    target_budget: int = 64
    train_steps: int = 1200
    batch_size: int = 16
    lr: float = 2e-3
    warmup: int = 50
    # TiM fine-tuning (each of the two runs)
    tim_steps: int = 120
    tim_batch: int = 8
    tim_lr: float = 3e-3
    #: S1 at the pixel scale only: the downstream user has imagery, not tokens.
    tim_scales: str = "pixels"
    tim_crops: int = 2
    # evaluation / examples
    eval_steps: int = 4
    eval_max_samples: int | None = None
    n_examples: int = 3
    #: Extra captions (WordPiece) in the token store.
    captions: bool = False

    @property
    def token_modalities(self) -> tuple[str, ...]:
        return IMAGE_TOKENS + SEQUENCE_TOKENS + (("CAPTION",) if self.captions else ())

    def subset(self, names: Sequence[str]) -> dict[str, Any]:
        return {n: getattr(self, n) for n in names}


QUICK = DemoConfig(
    world_preset="tiny",
    world_cache=True,
    workers=1,
    val_fraction=0.3,
    tok_steps=20,
    tok_batch=8,
    tok_crop=32,
    tok_width=8,
    tok_eval_samples=2,
    n_crops=1,
    crop_px=64,
    dim=32,
    enc_depth=2,
    dec_depth=1,
    heads=2,
    input_budget=48,
    target_budget=32,
    train_steps=20,
    batch_size=4,
    warmup=5,
    tim_steps=4,
    tim_batch=4,
    tim_crops=1,
    eval_steps=2,
    eval_max_samples=8,
    n_examples=1,
)


@dataclass(frozen=True)
class Stage:
    """One step of the main job.

    ``config`` names the :class:`DemoConfig` fields the stage's output depends on (recorded
    in its marker: a changed budget re-runs the stage and every later one); ``outputs``
    names the :func:`paths` it writes (removed before such a re-run).
    """

    name: str
    run: Callable[[Path, DemoConfig], dict]
    description: str
    config: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()


# --------------------------------------------------------------------------- paths


def paths(out: Path) -> dict[str, Path]:
    return {
        "world": out / "world",
        "plan": out / "plan.parquet",
        "corpus": out / "corpus",
        "tokenizers": out / "tokenizers",
        "tokens": out / "tokens",
        "run": out / "runs" / "pretrain",
        "tim": out / "tim",
        "evaluation": out / "evaluation",
        "examples": out / "examples",
        "report": out / "report.md",
    }


# --------------------------------------------------------------------------- stages


def stage_registry(out: Path, cfg: DemoConfig) -> dict:
    """Validate the registry and the exported contracts, print the modality table."""
    stale = out_of_sync()
    if stale:
        raise SystemExit(f"schema exports out of sync: {stale}; run `make schemas`")
    print(modality_table())
    return {"modalities": len(REGISTRY)}


def stage_world(out: Path, cfg: DemoConfig) -> dict:
    from terraloom.pipeline.world import cached_world, generate_world

    if cfg.world_cache:
        path = cached_world(cfg.world_preset, cfg.seed, progress=True)
        print(f"   world (shared cache) at {path}")
        return {"path": str(path), "cached": True}
    final = paths(out)["world"]
    if (final / "world.json").is_file():
        print(f"   world already at {final}")
        return {"path": str(final), "reused": True}
    tmp = out / ".world.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    info = generate_world(
        tmp, preset=cfg.world_preset, seed=cfg.seed, progress=True, workers=cfg.workers
    )
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)
    print(
        f"   {sum(info.item_counts.values())} STAC items ({info.nbytes / 1e6:.0f} MB): "
        + ", ".join(f"{k} {v}" for k, v in info.item_counts.items())
    )
    return {"path": str(final), "items": info.item_counts, "megabytes": round(info.nbytes / 1e6, 1)}


def stage_plan(out: Path, cfg: DemoConfig) -> dict:
    from terraloom.pipeline.plan import PlanConfig, plan_samples, summarize_plan, write_plan
    from terraloom.pipeline.sources import open_source

    p = paths(out)
    world = (_marker(out, "world") or {}).get("path", p["world"])
    opened = open_source(f"world:{world}")
    if opened.region is None or opened.time_range is None:
        raise RuntimeError("the world catalog names no region or period")
    pc = PlanConfig(
        samples_per_cell=cfg.samples_per_cell, val_fraction=cfg.val_fraction, seed=cfg.seed
    )
    table = plan_samples(opened.source, opened.region, opened.time_range, pc, progress=True)
    write_plan(table, p["plan"])
    summary = summarize_plan(table, pc.modalities)
    print(summary.format())
    return {"path": str(p["plan"]), "samples": summary.samples, "complete": summary.complete}


def stage_build(out: Path, cfg: DemoConfig) -> dict:
    from terraloom.pipeline.build import run_build

    p = paths(out)
    summary = run_build(p["plan"], p["corpus"], engine="beam", workers=cfg.workers, progress=True)
    print(summary.table())
    return {
        "path": str(p["corpus"]),
        "accepted": summary.accepted,
        "planned": summary.planned,
        "samples_per_s": round(summary.samples_per_second, 2),
    }


def stage_tokenizers(out: Path, cfg: DemoConfig) -> dict:
    from terraloom.tokenize_jobs.train import TrainConfig, train_tokenizer

    p = paths(out)
    result: dict[str, Any] = {}
    for name in cfg.token_modalities:
        target = p["tokenizers"] / name.lower()
        if (target / "config.json").is_file():
            print(f"   {name}: already trained")
            result[name] = "reused"
            continue
        tc = TrainConfig(
            modality=name,
            steps=cfg.tok_steps,
            batch=cfg.tok_batch,
            lr=cfg.tok_lr,
            warmup_steps=max(1, cfg.tok_steps // 10),
            crop_px=cfg.tok_crop,
            width=cfg.tok_width,
            channel_mult=cfg.tok_channel_mult,
            unshuffle=cfg.tok_unshuffle,
            entropy_weight=cfg.tok_entropy_weight,
            **({} if cfg.tok_linear_start else plain_tokenizer_start(name)),
            seed=cfg.seed,
            ckpt_every=max(1, cfg.tok_steps // 2),
            device="cpu",
            eval_samples=cfg.tok_eval_samples,
            eval_crops=1,
            vocab_size=2048,
        )
        t0 = time.perf_counter()
        train_tokenizer(tc, p["corpus"], target)
        result[name] = {"seconds": round(time.perf_counter() - t0, 1)}
        report = target / "eval.json"
        if report.is_file():
            result[name]["eval"] = _brief(json.loads(report.read_text()))
        print(f"   {name}: {result[name]}")
    return {"path": str(p["tokenizers"]), "tokenizers": result}


def _brief(report: dict) -> dict:
    if isinstance(report.get("headline"), dict):
        h = report["headline"]
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in h.items()}
    keep = {}
    for k, v in report.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            keep[k] = round(float(v), 4)
    return dict(list(keep.items())[:8])


def stage_encode(out: Path, cfg: DemoConfig) -> dict:
    from terraloom.tokenize_jobs.encode import EncodeConfig, encode

    p = paths(out)
    ec = EncodeConfig(
        n_crops=cfg.n_crops,
        crop_px=cfg.crop_px,
        batch=32,
        device="cpu",
        seed=cfg.seed,
        modalities=cfg.token_modalities,
        progress=True,
    )
    report = encode(p["corpus"], p["tokenizers"], p["tokens"], ec)
    for s in report.splits:
        print(
            f"   {s.split}: {s.n_samples} rows, {s.encoded_shards} shards encoded now ({s.already_committed} already), {s.samples_per_s:.1f} samples/s"
        )
    return {
        "path": str(p["tokens"]),
        "splits": {s.split: {"rows": s.n_samples, "valid": s.valid_rows} for s in report.splits},
    }


def train_config(out: Path, cfg: DemoConfig) -> Any:
    from terraloom.model.config import (
        AlphaMixture,
        DataConfig,
        MaskingConfig,
        ModelConfig,
        OptimConfig,
        TrainConfig,
    )

    p = paths(out)
    mods = cfg.token_modalities
    model = ModelConfig(
        dim=cfg.dim,
        enc_depth=cfg.enc_depth,
        dec_depth=cfg.dec_depth,
        heads=cfg.heads,
        image_px=cfg.crop_px,
        pixel_inputs=("S2L2A", "S1GRD"),
        token_inputs=mods,
        targets=mods,
    )
    masking = MaskingConfig(
        input_budget=cfg.input_budget,
        target_budget=cfg.target_budget,
        mixtures=(
            AlphaMixture("all_to_all", 1.0, 0.5, 0.5),
            AlphaMixture("s2_to_all", 1.0, 1.0, 0.5, input_only=("S2L2A",)),
            AlphaMixture("s1_to_all", 1.0, 1.0, 0.5, input_only=("S1GRD",)),
        ),
    )
    return TrainConfig(
        model=model,
        masking=masking,
        data=DataConfig(
            tokens=str(p["tokens"]),
            corpus=str(p["corpus"]),
            num_workers=1,
            prefetch_factor=4,
            pin_memory=False,
        ),
        optim=OptimConfig(lr=cfg.lr, warmup_steps=cfg.warmup, weight_decay=0.05),
        out_dir=str(p["run"]),
        seed=cfg.seed,
        steps=cfg.train_steps,
        batch_size=cfg.batch_size,
        device="cpu",
        log_every=max(1, cfg.train_steps // 10),
        eval_every=cfg.train_steps,
        eval_batches=4,
        ckpt_every=max(1, cfg.train_steps // 4),
        keep_ckpts=1,
        peak_tflops=0.1,
    )


def stage_train(out: Path, cfg: DemoConfig) -> dict:
    from terraloom.model.checkpoint import latest_checkpoint
    from terraloom.model.train import train
    from terraloom.tokenize_jobs.store import TokenStore

    tc = train_config(out, cfg)
    n_val = int(TokenStore(paths(out)["tokens"] / "val.zarr").valid.sum())
    if n_val < tc.batch_size:  # the val loader needs one whole batch
        print(f"   val split has {n_val} rows < batch {tc.batch_size}: no val loss during training")
        tc = dataclasses.replace(tc, eval_every=0)
    result = train(tc, resume=True, progress=True)
    ckpt = latest_checkpoint(tc.out_dir)
    last: dict[str, Any] = next(
        (r for r in reversed(result.history) if r.get("split") == "train"), {}
    )
    val: dict[str, Any] = next((r for r in reversed(result.history) if r.get("split") == "val"), {})
    return {
        "checkpoint": str(ckpt),
        "steps": result.steps_done,
        "train_loss": last.get("loss"),
        "val_loss": val.get("loss"),
        "samples_per_s": last.get("samples_per_s"),
    }


def _pretrained(out: Path) -> Any:
    from terraloom.model.checkpoint import load_model

    return load_model(paths(out)["run"])


def stage_tim(out: Path, cfg: DemoConfig) -> dict:
    from terraloom.model.tim import (
        FinetuneConfig,
        TiMConfig,
        compare_tim,
        load_segmentation_data,
        write_tim_report,
    )

    p = paths(out)
    model = _pretrained(out)
    tcfg = TiMConfig(inputs=("S1GRD",), thoughts=("LULC",), steps=1, scales=cfg.tim_scales)
    train = load_segmentation_data(
        model,
        p["corpus"],
        p["tokens"],
        "train",
        tcfg,
        crops=tuple(range(min(cfg.tim_crops, cfg.n_crops))),
    )
    val = load_segmentation_data(model, p["corpus"], p["tokens"], "val", tcfg, crops=(0,))
    ft = FinetuneConfig(steps=cfg.tim_steps, batch_size=cfg.tim_batch, lr=cfg.tim_lr, seed=cfg.seed)
    summary = compare_tim(model, train, val, tcfg, ft)
    md = write_tim_report(summary, p["tim"])
    print(md.read_text())
    return {
        "path": str(md),
        "miou_tim": summary["tim"]["miou"],
        "miou_no_tim": summary["no_tim"]["miou"],
        "winner": summary["winner"],
    }


def stage_evaluate(out: Path, cfg: DemoConfig) -> dict:
    from terraloom.model.evaluate import EvalConfig, evaluate_generation
    from terraloom.model.generate import SamplingConfig
    from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers

    p = paths(out)
    model = _pretrained(out)
    tokenizers = load_tokenizers(p["tokenizers"], ["S2L2A", "LULC", "DEM", "GEO"])
    ec = EvalConfig(
        max_samples=cfg.eval_max_samples,
        sampling=SamplingConfig(steps=cfg.eval_steps, temperature=0.0, choice_temperature=0.0),
        seed=cfg.seed,
    )
    report = evaluate_generation(model, tokenizers, p["corpus"], p["tokens"], ec)
    j, m = report.write(p["evaluation"])
    print(report.to_markdown())
    return {"json": str(j), "markdown": str(m), "all_beat_baseline": report.all_beat_baseline}


EXAMPLE_CHAINS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("S1GRD",), ("LULC", "S2L2A", "DEM", "GEO")),
    (("S2L2A",), ("LULC", "DEM", "S1GRD", "GEO")),
)


def stage_generate(out: Path, cfg: DemoConfig) -> dict:
    import numpy as np

    from terraloom.model.examples import write_examples
    from terraloom.model.generate import SamplingConfig
    from terraloom.model.samples import SampleReader, reference_values
    from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers

    p = paths(out)
    model = _pretrained(out)
    tokenizers = load_tokenizers(p["tokenizers"], [*IMAGE_TOKENS, *SEQUENCE_TOKENS])
    reader = SampleReader(p["corpus"], p["tokens"], "val")
    rows = reader.valid_rows
    pick = rows[np.linspace(0, len(rows) - 1, min(cfg.n_examples, len(rows))).astype(int)]
    crops = reader.crops(pick, 0)
    refs = reader.refs(pick, crops)
    image = SamplingConfig(steps=8, temperature=0.5, top_k=50)
    sampling = {name: image for name in IMAGE_TOKENS}
    panels: list[str] = []
    records = []
    for inputs, targets in EXAMPLE_CHAINS:
        cond = reader.conditioning(model, inputs, pick, 0)
        refs_v = reference_values(reader, targets, pick, crops)
        sub = p["examples"] / f"{'+'.join(inputs)}_to_{'-'.join(targets)}"
        recs = write_examples(
            model,
            tokenizers,
            cond,
            refs,
            targets,
            sub,
            sampling,
            seed=cfg.seed,
            chain=True,
            references=refs_v,
        )
        for r in recs:
            panels.append(r["files"]["panel"])
        records.extend(recs)
        print(f"   {' + '.join(inputs)} -> {' -> '.join(targets)}: {len(recs)} samples under {sub}")
    return {
        "path": str(p["examples"]),
        "panels": panels,
        "geotiffs": sum(
            len([k for k in r["files"] if k not in ("json", "panel")]) for r in records
        ),
    }


def stage_report(out: Path, cfg: DemoConfig) -> dict:
    p = paths(out)
    done = {s.name: _marker(out, s.name) for s in STAGES if s.name != "report"}
    budgets = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items())
    lines = [
        "# terraloom demo report",
        "",
        f"The whole mission on the embedded synthetic world (preset `{cfg.world_preset}`, seed {cfg.seed}),",
        "from a STAC catalog to generated GeoTIFFs. Paths are relative to this file.",
        "",
        f"<details><summary>budgets (DemoConfig)</summary>\n\n`{budgets}`\n\n</details>",
        "",
    ]
    build = done.get("build") or {}
    lines += [
        "## Corpus",
        "",
        f"Corpus at `{_rel(p['corpus'], out)}`: accepted {build.get('accepted')} of planned {build.get('planned')} samples.",
        "",
    ]
    ev = p["evaluation"] / "evaluation.md"
    if ev.is_file():
        lines += ["## Generation vs trivial baselines (val split)", "", ev.read_text().strip(), ""]
    tim = p["tim"] / "tim.md"
    if tim.is_file():
        lines += ["## Thinking-in-Modalities", "", tim.read_text().strip(), ""]
    panels = (done.get("generate") or {}).get("panels", [])
    if panels:
        lines += ["## Generated examples (inputs | generated | reference)", ""]
        for panel in panels:
            rel = _rel(Path(panel), out)
            lines += [f"![{rel}]({rel})", ""]
    lines += [
        "## Stage times (of the run that made each stage)",
        "",
        "| stage | seconds |",
        "|---|---|",
    ]
    total = 0.0
    for name, res in done.items():
        sec = (res or {}).get("seconds")
        total += float(sec or 0)
        lines.append(f"| {name} | {'-' if sec is None else sec} |")
    lines.append(f"| **total** | {total:.0f} |")
    lines += ["", "## Outputs", ""]
    for key in (
        "world",
        "plan",
        "corpus",
        "tokenizers",
        "tokens",
        "run",
        "tim",
        "evaluation",
        "examples",
    ):
        lines.append(f"- {key}: `{_rel(p[key], out)}`")
    p["report"].write_text("\n".join(lines) + "\n")
    return {"path": str(p["report"])}


def _rel(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def _marker(out: Path, name: str) -> dict | None:
    m = out / f".{name}.done"
    return json.loads(m.read_text()) if m.is_file() else None


_MODEL_FIELDS = (
    "dim",
    "enc_depth",
    "dec_depth",
    "heads",
    "input_budget",
    "target_budget",
    "train_steps",
    "batch_size",
    "lr",
    "warmup",
)

STAGES: tuple[Stage, ...] = (
    Stage("registry", stage_registry, "validate the modality registry and contracts"),
    Stage(
        "world",
        stage_world,
        "generate the embedded synthetic world (local STAC catalog of COGs)",
        ("world_preset", "world_cache", "seed"),
        ("world",),
    ),
    Stage(
        "plan",
        stage_plan,
        "plan samples: grid cells x matched scenes -> plan.parquet",
        ("samples_per_cell", "val_fraction"),
        ("plan",),
    ),
    Stage(
        "build",
        stage_build,
        "build the corpus on Apache Beam (Zarr v3 + index/rejects)",
        (),
        ("corpus",),
    ),
    Stage(
        "tokenizers",
        stage_tokenizers,
        "train the tokenizers (FSQ-VAE images, GEO bins) on a short budget",
        (
            "tok_steps",
            "tok_batch",
            "tok_crop",
            "tok_width",
            "tok_channel_mult",
            "tok_unshuffle",
            "tok_lr",
            "tok_entropy_weight",
            "tok_linear_start",
            "captions",
        ),
        ("tokenizers",),
    ),
    Stage(
        "encode",
        stage_encode,
        "pre-tokenize the corpus into the token store",
        ("n_crops", "crop_px"),
        ("tokens",),
    ),
    Stage(
        "train",
        stage_train,
        "train the dual-scale any-to-any model on a short budget",
        _MODEL_FIELDS,
        ("run",),
    ),
    Stage(
        "tim",
        stage_tim,
        "S1 -> land-cover segmentation fine-tuned with and without TiM (LULC thoughts)",
        ("tim_steps", "tim_batch", "tim_lr", "tim_scales", "tim_crops"),
        ("tim",),
    ),
    Stage(
        "evaluate",
        stage_evaluate,
        "generation metrics on val next to trivial baselines",
        ("eval_steps", "eval_max_samples"),
        ("evaluation",),
    ),
    Stage(
        "generate",
        stage_generate,
        "chained any-to-any examples: GeoTIFFs + PNG panels",
        ("n_examples",),
        ("examples",),
    ),
    Stage("report", stage_report, "write report.md", (), ("report",)),
)


# --------------------------------------------------------------------------- runner


def _invalidate(out: Path, stages: Sequence[Stage]) -> None:
    """Remove the markers and outputs of ``stages`` (a budget they depend on changed)."""
    p = paths(out)
    for st in stages:
        (out / f".{st.name}.done").unlink(missing_ok=True)
        for key in st.outputs:
            target = p.get(key)
            if target is None or not target.exists():
                continue
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink()


def run_stages(
    out: Path,
    stages: Sequence[Stage] = STAGES,
    cfg: DemoConfig = DemoConfig(),
    force: bool = False,
    until: str | None = None,
) -> dict[str, dict]:
    """Run the stages in order; a stage whose marker holds the same budgets is skipped.

    A stage whose budgets differ from its marker's (or ``force``) re-runs together with
    every later stage, after their old outputs are removed. Returns each stage's result
    (a skipped stage: its marker, with ``"skipped": True``).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    stale = False
    for i, stage in enumerate(stages, 1):
        marker = out / f".{stage.name}.done"
        want = json.loads(json.dumps(cfg.subset(stage.config), default=str))
        print(
            f"\n== [{i}/{len(stages)}] {stage.name}: {stage.description}  (t = {time.perf_counter() - t_all:.0f} s)",
            flush=True,
        )
        done = json.loads(marker.read_text()) if marker.exists() else None
        if done is not None and not stale and not force and done.get("config", {}) == want:
            results[stage.name] = {**done, "skipped": True}
            print(f"   finished earlier, skipped ({marker.name})")
        else:
            if done is not None and not force and not stale:
                changed = {
                    k: (done.get("config", {}).get(k), v)
                    for k, v in want.items()
                    if done.get("config", {}).get(k) != v
                }
                print(
                    f"   budgets changed since the last run {changed}: re-running this and every later stage"
                )
            if done is not None or stale or force:
                _invalidate(out, stages[i - 1 :])
            stale = stale or bool(stage.outputs)  # later stages consume this stage's new output
            t0 = time.perf_counter()
            result = stage.run(out, cfg)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            result["config"] = want
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(json.dumps(result, indent=2, default=str))
            tmp.replace(marker)
            results[stage.name] = result
            print(f"   done in {result['seconds']} s", flush=True)
        if until is not None and stage.name == until:
            break
    return results


def print_summary(out: Path, results: dict[str, dict], seconds: float) -> None:
    p = paths(out)
    ev = p["evaluation"] / "evaluation.md"
    tim = p["tim"] / "tim.md"
    print("\n" + "=" * 80)
    if ev.is_file():
        print("Generation on the val split (model vs trivial baseline):\n")
        print(ev.read_text())
    if tim.is_file():
        print(tim.read_text())
    print("Outputs:")
    for key in ("corpus", "tokens", "tokenizers", "run", "evaluation", "tim", "examples"):
        print(f"  {key:<11} {p[key]}")
    for panel in (results.get("generate") or {}).get("panels", []):
        print(f"  panel       {panel}")
    print(f"  report      {p['report']}")
    print(f"\nwall time of this run: {seconds:.0f} s")


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument(
        "--quick", action="store_true", help="tiny world and minimal budgets (the end-to-end test)"
    )
    parser.add_argument("--force", action="store_true", help="re-run finished stages")
    parser.add_argument("--until", choices=[s.name for s in STAGES], help="stop after this stage")
    add_config_args(parser, DemoConfig)


def demo_config_from_args(args: argparse.Namespace) -> DemoConfig:
    """``DemoConfig`` (or ``--quick``'s budgets) <- ``--config`` <- ``--set``."""
    from terraloom.schemas.config import to_dict

    base = to_dict(QUICK) if args.quick else None
    return config_from_args(DemoConfig, args, base=base)


def run_demo_command(args: argparse.Namespace) -> int:
    try:
        cfg = demo_config_from_args(args)
    except ValueError as exc:  # ConfigError and DemoConfig's own checks
        print(f"terraloom-demo: error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    results = run_stages(args.out, STAGES, cfg, force=args.force, until=args.until)
    print_summary(args.out, results, time.perf_counter() - t0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="terraloom-demo",
        description="The whole mission on the embedded synthetic world, stage by stage: world, "
        "plan, build (Beam), tokenizers, encode, train, TiM, evaluate, generate, report. Each "
        "stage writes its outputs under --out and a marker last, so a second run skips what "
        "is finished and a killed run resumes. Budgets are DemoConfig fields (--config/--set); "
        "--quick selects a tiny world and minimal budgets.",
    )
    add_version(parser)
    add_demo_args(parser)
    return run_demo_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
