"""The main job: the whole mission on the embedded synthetic world, stage by stage.

registry -> world (``demo`` preset) -> plan -> build (Beam) -> tokenizers -> encode ->
publish -> train -> probe -> TiM -> evaluate -> generate -> report. Each stage writes its outputs under
``--out`` and a ``.<stage>.done`` marker (its JSON summary) last, so a second ``make demo``
skips what is finished and a killed run resumes at the stage it was in (the stages
themselves resume too: the build and the encode job skip committed shards, tokenizer and
model training continue from their checkpoints).

Budgets (steps, widths, crops) live in :class:`DemoConfig`; ``--quick`` selects a tiny
world and minimal budgets (the end-to-end test), the default fits the 20-minute budget of
a 2-core CPU machine.

One module on purpose: the stage list, its budgets, the runner that skips and re-runs
stages by their markers and the report are one idea (what the main job does and in which
order) and read best together. Stages with more wiring than a call live beside it
(``publish_stage``, ``probe_stage``); each stage's work lives in its stage package.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from terraloom.model.config import AlphaMixture, MaskingConfig, ModelConfig, OptimConfig
from terraloom.model.config import TrainConfig as PretrainConfig
from terraloom.model.evaluate import EvalConfig
from terraloom.model.generate import EXPECTED, SamplingConfig
from terraloom.model.probe import ProbeConfig
from terraloom.model.tim import FinetuneConfig, TiMStudyConfig
from terraloom.orchestration.probe_stage import probe_markdown, run_probe
from terraloom.orchestration.publish_stage import DEMO_PUBLISH, publish_demo, publish_section
from terraloom.pipeline.plan import PlanConfig
from terraloom.pipeline.publish import PublishConfig
from terraloom.schemas.cli import modality_table
from terraloom.schemas.cliargs import add_config_args, add_storage_option, add_version
from terraloom.schemas.config import apply_overrides, from_dict, read_config_file, to_dict
from terraloom.schemas.jsonschema import out_of_sync
from terraloom.schemas.modalities import REGISTRY, get_modality
from terraloom.storage.location import Location, LocationError, parse_storage_options
from terraloom.storage.transfer import cache_dir, upload_tree
from terraloom.tokenize_jobs.encode_config import EncodeConfig
from terraloom.tokenize_jobs.train import TrainConfig as TokenizerConfig

#: Modalities the demo tokenizes and models by default (S1RTC and NDVI are built but not
#: tokenized: the evaluation and TiM tasks do not need them and CPU minutes are scarce).
#: The model config decides: every token input and target of ``pretrain.model`` is tokenized.
IMAGE_TOKENS = ("S2L2A", "S1GRD", "DEM", "LULC")
SEQUENCE_TOKENS = ("GEO",)


def _tokenizer(steps: int = 200, **kw: Any) -> TokenizerConfig:
    """The recipe every demo tokenizer trains with (``modality`` is set per modality).

    The recipe ``bench/tokenizers.py`` measured: the linear start with its compander and
    band balancing, each modality's FSQ grouping and entropy weight (``None``: the
    modality's default, ``tokenize_jobs.train.DEFAULT_ENTROPY_WEIGHT``).
    """
    base: dict[str, Any] = dict(
        modality="S2L2A",
        steps=steps,
        batch=16,
        lr=2e-3,
        warmup_steps=max(1, steps // 10),
        crop_px=64,
        width=32,
        channel_mult=(1, 2, 4, 4),
        unshuffle=2,
        entropy_weight=None,
        seed=0,
        ckpt_every=max(1, steps // 2),
        device="cpu",
        eval_samples=8,
        eval_crops=1,
        vocab_size=2048,
    )
    return TokenizerConfig(**{**base, **kw})


def _pretrain(
    dim: int = 128,
    enc_depth: int = 4,
    dec_depth: int = 2,
    heads: int = 4,
    image_px: int = 128,
    input_budget: int = 128,
    target_budget: int = 64,
    **kw: Any,
) -> PretrainConfig:
    """The any-to-any model and its training budget (data paths are filled in per run)."""
    mods = IMAGE_TOKENS + SEQUENCE_TOKENS
    base: dict[str, Any] = dict(
        model=ModelConfig(
            dim=dim,
            enc_depth=enc_depth,
            dec_depth=dec_depth,
            heads=heads,
            image_px=image_px,
            pixel_inputs=("S2L2A", "S1GRD"),
            token_inputs=mods,
            targets=mods,
        ),
        masking=MaskingConfig(
            input_budget=input_budget,
            target_budget=target_budget,
            mixtures=(
                AlphaMixture("all_to_all", 1.0, 0.5, 0.5),
                AlphaMixture("s2_to_all", 1.0, 1.0, 0.5, input_only=("S2L2A",)),
                AlphaMixture("s1_to_all", 1.0, 1.0, 0.5, input_only=("S1GRD",)),
            ),
        ),
        optim=OptimConfig(lr=2e-3, warmup_steps=50, weight_decay=0.05),
        seed=0,
        steps=1200,
        batch_size=16,
        device="cpu",
        eval_batches=4,
        keep_ckpts=1,
        peak_tflops=0.1,
    )
    return PretrainConfig(**{**base, **kw})


#: What the demo's evaluation decodes with: argmax tokens in 4 steps, most confident first,
#: images from the expected latents (docs/model.md, "Sampling controls").
EVAL_SAMPLING = EXPECTED
#: What the example panels are drawn with (see docs/model.md, "Sampling controls").
EXAMPLE_SAMPLING = SamplingConfig(steps=8, temperature=0.5, decode="expected")


@dataclass(frozen=True)
class DemoConfig:
    """Every budget of the main job (the fingerprint of an output directory).

    The stages' own config dataclasses, nested: ``--set tokenizer.steps=400``,
    ``--set pretrain.model.dim=192``, ``--set tim.seeds=[0,1,2,3]``.
    """

    world_preset: str = "demo"
    #: Use the shared world cache (``pipeline.world.cached_world``) instead of ``<out>/world``.
    world_cache: bool = False
    #: Seed of the world (the stages have their own ``seed`` fields).
    seed: int = 0
    workers: int = 2
    plan: PlanConfig = PlanConfig(samples_per_cell=9, val_fraction=0.15)
    #: The recipe of every image tokenizer; ``modality`` is replaced per modality.
    tokenizer: TokenizerConfig = field(default_factory=_tokenizer)
    #: Fields of ``tokenizer`` changed for one modality. LULC trains without the
    #: codebook-usage regulariser: at the demo's 200 steps its default weight (0.1) cost the
    #: land-cover tokenizer its lead over the patch-majority baseline (docs/bench.md).
    tokenizer_overrides: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: {"LULC": {"entropy_weight": 0.0}}, hash=False
    )
    #: ``crop_px`` must be the model's ``image_px``; ``modalities`` is set from the model.
    encode: EncodeConfig = EncodeConfig(n_crops=2, crop_px=128, batch=32, device="cpu")
    #: ``data`` and ``out_dir`` are set per run.
    pretrain: PretrainConfig = field(default_factory=_pretrain)
    tim: TiMStudyConfig = TiMStudyConfig(
        finetune=FinetuneConfig(steps=120, batch_size=8, lr=3e-3), train_crops=2
    )
    evaluation: EvalConfig = EvalConfig(sampling=EVAL_SAMPLING)
    n_examples: int = 3
    example_sampling: SamplingConfig = EXAMPLE_SAMPLING
    #: How the corpus is published (``<out>/published/<version>/``, with the token store).
    publish: PublishConfig = DEMO_PUBLISH
    #: The linear probe on pretrained vs random-init encoder embeddings (``<out>/probe/``).
    probe: ProbeConfig = ProbeConfig()

    def tokenizer_for(self, modality: str) -> TokenizerConfig:
        """The recipe with ``modality`` and its overrides (checked like any config)."""
        name = get_modality(modality).name
        tree = {**to_dict(self.tokenizer), **dict(self.tokenizer_overrides.get(name, {}))}
        return from_dict(TokenizerConfig, {**tree, "modality": name}, f"tokenizer[{name}]")

    def __post_init__(self) -> None:
        for name in self.tokenizer_overrides:
            self.tokenizer_for(name)  # unknown modality or field: refused up front
        if self.encode.crop_px != self.pretrain.model.image_px:
            raise ValueError(
                f"encode.crop_px {self.encode.crop_px} must equal pretrain.model.image_px "
                f"{self.pretrain.model.image_px} (the model reads the encoded crops)"
            )

    @property
    def token_modalities(self) -> tuple[str, ...]:
        m = self.pretrain.model
        return tuple(dict.fromkeys([*m.token_inputs, *m.targets]))

    @property
    def crop_px(self) -> int:
        return self.pretrain.model.image_px

    def subset(self, names: Sequence[str]) -> dict[str, Any]:
        return {n: getattr(self, n) for n in names}


QUICK = DemoConfig(
    world_preset="tiny",
    world_cache=True,
    workers=1,
    plan=PlanConfig(samples_per_cell=9, val_fraction=0.3),
    tokenizer=_tokenizer(20, batch=8, crop_px=32, width=8, eval_samples=2, init_crops=32),
    encode=EncodeConfig(n_crops=1, crop_px=64, batch=32, device="cpu"),
    pretrain=_pretrain(
        dim=32,
        enc_depth=2,
        dec_depth=1,
        heads=2,
        image_px=64,
        input_budget=48,
        target_budget=32,
        steps=20,
        batch_size=4,
        optim=OptimConfig(lr=2e-3, warmup_steps=5, weight_decay=0.05),
    ),
    tim=TiMStudyConfig(
        finetune=FinetuneConfig(steps=4, batch_size=4, lr=3e-3),
        train_crops=1,
        generate_steps=2,
    ),
    evaluation=EvalConfig(max_samples=8, sampling=dataclasses.replace(EVAL_SAMPLING, steps=2)),
    n_examples=1,
    publish=dataclasses.replace(DEMO_PUBLISH, gallery_samples=2),  # a figure costs ~1 s
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
    #: False: no later stage reads this stage's outputs (publish, probe), so running it does
    #: not re-run the later stages, and a re-run removes only its own outputs.
    feeds_later: bool = True
    #: Re-run whenever an earlier stage ran in the same call (the report, which reads every
    #: marker), even with its own marker current.
    follows_any: bool = False


# --------------------------------------------------------------------------- paths


def paths(out: Path) -> dict[str, Path]:
    return {
        "world": out / "world",
        "plan": out / "plan.parquet",
        "corpus": out / "corpus",
        "tokenizers": out / "tokenizers",
        "tokens": out / "tokens",
        "published": out / "published",
        "run": out / "runs" / "pretrain",
        "probe": out / "probe",
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
    from terraloom.pipeline.plan import plan_samples, summarize_plan, write_plan
    from terraloom.pipeline.sources import open_source

    p = paths(out)
    world = (_marker(out, "world") or {}).get("path", p["world"])
    opened = open_source(f"world:{world}")
    if opened.region is None or opened.time_range is None:
        raise RuntimeError("the world catalog names no region or period")
    pc = cfg.plan
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
    from terraloom.tokenize_jobs.train import train_tokenizer

    p = paths(out)
    result: dict[str, Any] = {}
    for name in cfg.token_modalities:
        target = p["tokenizers"] / name.lower()
        if (target / "config.json").is_file():
            print(f"   {name}: already trained")
            result[name] = "reused"
            continue
        tc = cfg.tokenizer_for(name)
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
    from terraloom.tokenize_jobs.encode import encode

    p = paths(out)
    ec = dataclasses.replace(cfg.encode, modalities=cfg.token_modalities, progress=True)
    report = encode(p["corpus"], p["tokenizers"], p["tokens"], ec)
    for s in report.splits:
        print(
            f"   {s.split}: {s.n_samples} rows, {s.encoded_shards} shards encoded now ({s.already_committed} already), {s.samples_per_s:.1f} samples/s"
        )
    return {
        "path": str(p["tokens"]),
        "splits": {s.split: {"rows": s.n_samples, "valid": s.valid_rows} for s in report.splits},
    }


def stage_publish(out: Path, cfg: DemoConfig) -> dict:
    p = paths(out)
    return publish_demo(p["corpus"], p["tokens"], p["published"], cfg.publish)


def train_config(out: Path, cfg: DemoConfig) -> Any:
    """``cfg.pretrain`` with this output directory's data and run paths."""
    from terraloom.model.config import DataConfig

    p = paths(out)
    tc = cfg.pretrain
    return dataclasses.replace(
        tc,
        data=DataConfig(
            tokens=str(p["tokens"]),
            corpus=str(p["corpus"]),
            num_workers=1,
            prefetch_factor=4,
            pin_memory=False,
        ),
        out_dir=str(p["run"]),
        log_every=max(1, tc.steps // 10),
        eval_every=tc.steps,
        ckpt_every=max(1, tc.steps // 4),
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


def stage_probe(out: Path, cfg: DemoConfig) -> dict:
    p = paths(out)
    return run_probe(p["corpus"], p["run"], p["probe"], cfg.probe, device=cfg.pretrain.device)


def stage_tim(out: Path, cfg: DemoConfig) -> dict:
    from terraloom.model.tim import load_segmentation_data, tim_study, write_tim_study
    from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers

    p = paths(out)
    model = _pretrained(out)
    study = cfg.tim
    tcfg = study.tim_config()
    crops = tuple(range(min(study.train_crops, cfg.encode.n_crops)))
    train = load_segmentation_data(model, p["corpus"], p["tokens"], "train", tcfg, crops=crops)
    val = load_segmentation_data(model, p["corpus"], p["tokens"], "val", tcfg, crops=(0,))
    lulc = load_tokenizers(p["tokenizers"], ["LULC"])["LULC"]
    summary = tim_study(model, train, val, study, lulc)
    md = write_tim_study(summary, p["tim"])
    print(md.read_text())
    return {
        "path": str(md),
        "miou": {k: round(r["miou"]["mean"], 4) for k, r in summary["finetune"].items()},
        "verdicts": {k: r.get("verdict") for k, r in summary["finetune"].items() if k != "none"},
    }


def stage_evaluate(out: Path, cfg: DemoConfig) -> dict:
    from terraloom.model.evaluate import DEFAULT_TASKS, evaluate_generation
    from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers

    p = paths(out)
    model = _pretrained(out)
    tokenizers = load_tokenizers(p["tokenizers"], [t.target for t in DEFAULT_TASKS])
    report = evaluate_generation(model, tokenizers, p["corpus"], p["tokens"], cfg.evaluation)
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
    from terraloom.model.samples import SampleReader, reference_values
    from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers

    p = paths(out)
    model = _pretrained(out)
    tokenizers = load_tokenizers(p["tokenizers"], list(cfg.token_modalities))
    reader = SampleReader(p["corpus"], p["tokens"], "val")
    rows = reader.valid_rows
    pick = rows[np.linspace(0, len(rows) - 1, min(cfg.n_examples, len(rows))).astype(int)]
    crops = reader.crops(pick, 0)
    refs = reader.refs(pick, crops)
    sampling = {n: cfg.example_sampling for n in cfg.token_modalities if get_modality(n).is_image}
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
            seed=cfg.evaluation.seed,
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
    import yaml

    from terraloom.schemas.config import to_dict

    budgets = yaml.safe_dump(to_dict(cfg), sort_keys=False)
    lines = [
        "# terraloom demo report",
        "",
        f"The whole mission on the embedded synthetic world (preset `{cfg.world_preset}`, seed {cfg.seed}),",
        "from a STAC catalog to generated GeoTIFFs. Paths are relative to this file.",
        "",
        f"<details><summary>budgets (DemoConfig)</summary>\n\n```yaml\n{budgets}```\n\n</details>",
        "",
    ]
    build = done.get("build") or {}
    lines += [
        "## Corpus",
        "",
        f"Corpus at `{_rel(p['corpus'], out)}`: {_counts(build)}.",
        "",
    ]
    published = done.get("publish")
    if published:
        lines += publish_section(published, lambda path: _rel(path, out))
    probe = p["probe"] / "probe.json"
    if probe.is_file():
        lines += [
            "## Linear probe: land cover from encoder embeddings (val split)",
            "",
            probe_markdown(json.loads(probe.read_text())),
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
        "published",
        "run",
        "probe",
        "tim",
        "evaluation",
        "examples",
    ):
        lines.append(f"- {key}: `{_rel(p[key], out)}`")
    p["report"].write_text("\n".join(lines) + "\n")
    return {"path": str(p["report"])}


def _counts(build: dict) -> str:
    """``accepted 314 of 327 planned samples (train 254 of 264, val 60 of 63)`` from the build
    stage's marker (per-split dicts; plain numbers from older markers pass through)."""
    acc, plan = build.get("accepted"), build.get("planned")
    if not (isinstance(acc, dict) and isinstance(plan, dict)):
        return f"accepted {acc} of {plan} planned samples"
    splits = ", ".join(f"{s} {acc.get(s, 0)} of {n}" for s, n in plan.items())
    return f"accepted {sum(acc.values())} of {sum(plan.values())} planned samples ({splits})"


def _rel(path: Path, out: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return str(path)


def _marker(out: Path, name: str) -> dict | None:
    m = out / f".{name}.done"
    return json.loads(m.read_text()) if m.is_file() else None


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
        ("plan",),
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
        ("tokenizer", "tokenizer_overrides", "token_modalities"),
        ("tokenizers",),
    ),
    Stage(
        "encode",
        stage_encode,
        "pre-tokenize the corpus into the token store",
        ("encode", "token_modalities"),
        ("tokens",),
    ),
    Stage(
        "publish",
        stage_publish,
        "publish the corpus and token store (STAC, Croissant, card, SHA256SUMS, shards), verify",
        ("publish",),
        ("published",),
        feeds_later=False,
    ),
    Stage(
        "train",
        stage_train,
        "train the dual-scale any-to-any model on a short budget",
        ("pretrain",),
        ("run",),
    ),
    Stage(
        "probe",
        stage_probe,
        "linear probe of LULC on pretrained vs random-init encoder embeddings",
        ("probe",),
        ("probe",),
        feeds_later=False,
    ),
    Stage(
        "tim",
        stage_tim,
        "S1 -> land-cover segmentation with and without thoughts, over seeds, both placements",
        ("tim",),
        ("tim",),
    ),
    Stage(
        "evaluate",
        stage_evaluate,
        "generation metrics on val next to trivial baselines",
        ("evaluation",),
        ("evaluation",),
    ),
    Stage(
        "generate",
        stage_generate,
        "chained any-to-any examples: GeoTIFFs + PNG panels",
        ("n_examples", "example_sampling"),
        ("examples",),
    ),
    Stage("report", stage_report, "write report.md", (), ("report",), follows_any=True),
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
    every later stage, after their old outputs are removed (a stage that feeds no later one,
    ``Stage.feeds_later``, re-runs alone; the report follows any stage that ran). Returns
    each stage's result (a skipped stage: its marker, with ``"skipped": True``).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo_config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    results: dict[str, dict] = {}
    t_all = time.perf_counter()
    stale = ran = False
    for i, stage in enumerate(stages, 1):
        marker = out / f".{stage.name}.done"
        want = json.loads(json.dumps(to_dict(cfg.subset(stage.config)), default=str))
        print(
            f"\n== [{i}/{len(stages)}] {stage.name}: {stage.description}  (t = {time.perf_counter() - t_all:.0f} s)",
            flush=True,
        )
        done = json.loads(marker.read_text()) if marker.exists() else None
        changed_budgets = done is not None and done.get("config", {}) != want
        follows = stage.follows_any and ran
        if done is not None and not changed_budgets and not stale and not force and not follows:
            results[stage.name] = {**done, "skipped": True}
            print(f"   finished earlier, skipped ({marker.name})")
        else:
            if done is not None and changed_budgets and not force and not stale:
                changed = {
                    k: (done.get("config", {}).get(k), v)
                    for k, v in want.items()
                    if done.get("config", {}).get(k) != v
                }
                print(
                    f"   budgets changed since the last run {changed}: re-running this and every later stage"
                )
            if done is not None or stale or force:
                _invalidate(out, stages[i - 1 :] if stage.feeds_later else [stage])
            # later stages consume this stage's new output
            stale = stale or (bool(stage.outputs) and stage.feeds_later)
            ran = True
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
    card = (results.get("publish") or {}).get("card")
    if card:
        print(f"  {'card':<11} {card}")
    probe = p["probe"] / "probe.md"
    if probe.is_file():
        print(f"  {'probe':<11} {probe}")
    for panel in (results.get("generate") or {}).get("panels", []):
        print(f"  panel       {panel}")
    print(f"  report      {p['report']}")
    print(f"\nwall time of this run: {seconds:.0f} s")


def add_demo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        default="demo_out",
        help="output directory or location (s3://, gs://, az://, memory://: the stages run in "
        "a local staging folder and the finished output is copied there)",
    )
    add_storage_option(parser)
    parser.add_argument(
        "--quick", action="store_true", help="tiny world and minimal budgets (the end-to-end test)"
    )
    parser.add_argument("--force", action="store_true", help="re-run finished stages")
    parser.add_argument("--until", choices=[s.name for s in STAGES], help="stop after this stage")
    add_config_args(parser, DemoConfig)


def _merge(tree: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into ``tree`` section by section (a file may set one nested key)."""
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(tree.get(k), dict):
            _merge(tree[k], v)
        else:
            tree[k] = v
    return tree


def demo_config_from_args(args: argparse.Namespace) -> DemoConfig:
    """``DemoConfig`` (or ``--quick``'s budgets) <- ``--config`` <- ``--set``.

    Nested sections merge key by key: ``--set tokenizer.steps=400`` (or a file holding only
    ``tokenizer: {steps: 400}``) keeps every other field of the demo's tokenizer recipe,
    not the stage dataclass' own defaults.
    """
    tree = to_dict(QUICK if args.quick else DemoConfig())
    if args.config is not None:
        _merge(tree, read_config_file(args.config))
    apply_overrides(tree, args.overrides)
    return from_dict(DemoConfig, tree)


def run_demo_command(args: argparse.Namespace) -> int:
    try:
        cfg = demo_config_from_args(args)
    except ValueError as exc:  # ConfigError and DemoConfig's own checks
        print(f"terraloom-demo: error: {exc}", file=sys.stderr)
        return 2
    try:
        dest = Location.parse(args.out, parse_storage_options(args.storage_option))
    except (LocationError, ValueError) as exc:
        print(f"terraloom-demo: error: {exc}", file=sys.stderr)
        return 2
    work = dest.local_path if dest.is_local else cache_dir(dest, "demo")
    t0 = time.perf_counter()
    results = run_stages(work, STAGES, cfg, force=args.force, until=args.until)
    print_summary(work, results, time.perf_counter() - t0)
    if not dest.is_local:
        print(f"copying {work} to {dest} ...")
        print(f"   {mirror_output(work, dest) / 1e6:.1f} MB written to {dest}")
    return 0


def mirror_output(work: Path, dest: Location) -> int:
    """Copy a finished local demo output to a remote location: the files ``dest`` does not
    hold with the same size (a re-run copies only what changed), the stage markers last so a
    reader never finds a marker before its outputs. Returns the bytes written."""
    names = sorted(p.relative_to(work).as_posix() for p in work.rglob("*") if p.is_file())
    have = dest.file_sizes()
    todo = [n for n in names if have.get(n) != (work / n).stat().st_size]
    todo.sort(key=lambda n: n.startswith(".") and n.endswith(".done"))
    return upload_tree(work, dest, todo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="terraloom-demo",
        description="The whole mission on the embedded synthetic world, stage by stage: world, "
        "plan, build (Beam), tokenizers, encode, publish, train, probe, TiM, evaluate, generate, "
        "report. Each "
        "stage writes its outputs under --out and a marker last, so a second run skips what "
        "is finished and a killed run resumes. Budgets are DemoConfig fields (--config/--set); "
        "--quick selects a tiny world and minimal budgets.",
    )
    add_version(parser)
    add_demo_args(parser)
    return run_demo_command(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
