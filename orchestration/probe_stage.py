"""The demo's linear probe (issue 21): what pretraining put into the encoder's patch tokens.

Wires the model stage's parts: the ``embed`` job (``model.interop.embed``) writes per-patch
encoder embeddings of the train and val splits, once for the trained model and once for
the same architecture at random init (``ProbeConfig.seed``), for each set of pixel inputs
of ``ProbeConfig.inputs``; the corpus gives each patch's majority land-cover class and the
patch means of the input pixels (the no-encoder reference); ``model.probe`` fits a linear
probe per feature set on train and scores it on val next to the majority class. Everything
lands under ``<out>/probe/``: ``embeddings/<inputs>/<encoder>/<split>/`` (GeoParquet +
``patches.zarr``), ``random_init/`` (the reference weights), ``probe.json`` and ``probe.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from terraloom.model.probe import ProbeConfig

SPLITS = ("train", "val")
#: The feature sets of one probe, in the report's order.
FEATURES = ("pretrained", "random_init", "pixel_means")


def _split_rows(
    corpus: Path, split: str, rows: np.ndarray, model_cfg: Any, mods: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(labels (B*N,), pixel patch means (B*N, C)) of one split's rows: each patch's majority
    LULC class and its bands' means, over the centre crop and patches ``embed`` reads."""
    from terraloom.model.interop.embed import center_patches
    from terraloom.model.probe import patch_majority, pixel_patch_means
    from terraloom.schemas.legends import LULC_CLASSES, lulc_to_index
    from terraloom.schemas.modalities import get_modality
    from terraloom.tokenize_jobs.corpus_reader import open_split, read_rows

    px, patch = model_cfg.image_px, model_cfg.patch_px
    group = open_split(corpus, split)
    lulc = read_rows(group, "LULC", rows)[:, 0]
    off = (lulc.shape[-1] - px) // 2  # the crop of embed.center_patches
    classes = lulc_to_index(lulc[:, off : off + px, off : off + px])
    labels = patch_majority(classes, patch, len(LULC_CLASSES)).reshape(-1)
    means = [
        pixel_patch_means(
            center_patches(read_rows(group, m, rows), m, px, patch), len(get_modality(m).bands)
        )
        for m in mods
    ]
    return labels, np.concatenate(means, -1).reshape(len(labels), -1)


def _embeddings(
    src: Path,
    corpus: Path,
    dest: Path,
    mods: tuple[str, ...],
    split: str,
    cfg: ProbeConfig,
    device: str,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-patch embeddings of one split by the ``embed`` job (resumable: a killed stage
    re-embeds only missing batches), pooled over the modalities: (rows, (B*N, D))."""
    import pyarrow.parquet as pq
    import zarr

    from terraloom.model.interop.embed import EMBED_FILE, PATCH_FILE, EmbedConfig, embed
    from terraloom.model.probe import pool_modalities

    ec = EmbedConfig(
        checkpoint=str(src),
        corpus=str(corpus),
        out=str(dest),
        modalities=mods,
        split=split,
        batch=cfg.batch,
        per_patch=True,
        device=device,
    )
    embed(ec)
    tokens = np.asarray(zarr.open_array(str(dest / PATCH_FILE), mode="r")[:])
    pooled = pool_modalities(tokens, len(mods))
    rows = pq.read_table(dest / EMBED_FILE, columns=["row"]).column("row").to_numpy()
    return rows, pooled.reshape(-1, pooled.shape[-1])


def run_probe(corpus: Path, run: Path, out: Path, cfg: ProbeConfig, device: str = "cpu") -> dict:
    """Embed, label, fit and score (see the module docstring); the stage's summary."""
    import torch

    from terraloom.model.interop.weights import read_model_config, weights_dir
    from terraloom.model.probe import probe_study
    from terraloom.model.transformer import TerraloomModel
    from terraloom.schemas.legends import LULC_CLASSES
    from terraloom.schemas.modalities import get_modality

    t0 = time.perf_counter()
    sources = {"pretrained": weights_dir(run), "random_init": out / "random_init"}
    model_cfg = read_model_config(sources["pretrained"])
    if not (sources["random_init"] / "config.json").is_file():
        torch.manual_seed(cfg.seed)
        TerraloomModel(model_cfg).save_pretrained(sources["random_init"])
    studies: dict[str, Any] = {}
    seconds = {"embed": 0.0, "fit": 0.0}
    for inputs in cfg.inputs:
        mods = tuple(get_modality(m).name for m in inputs)
        key = "+".join(mods)
        features: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
        labels: dict[str, np.ndarray] = {}
        for split in SPLITS:
            for name, src in sources.items():
                dest = out / "embeddings" / key / name / split
                rows, x = _embeddings(src, corpus, dest, mods, split, cfg, device)
                features[name].append(x)
            labels[split], means = _split_rows(corpus, split, rows, model_cfg, mods)
            features["pixel_means"].append(means)
        t1 = time.perf_counter()
        studies[key] = probe_study(
            {name: (f[0], f[1]) for name, f in features.items()},
            labels["train"],
            labels["val"],
            len(LULC_CLASSES),
            cfg,
        )
        seconds["fit"] += time.perf_counter() - t1
    seconds["embed"] = time.perf_counter() - t0 - seconds["fit"]
    doc = {
        "setup": {
            "image_px": model_cfg.image_px,
            "patch_px": model_cfg.patch_px,
            "dim": model_cfg.dim,
            "seed": cfg.seed,
            "steps": cfg.steps,
        },
        "inputs": studies,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = out / "probe.md"
    md.write_text(probe_markdown(doc) + "\n")
    print(md.read_text())
    return {
        "json": str(out / "probe.json"),
        "markdown": str(md),
        "probes": {
            key: {
                **{name: _brief(r) for name, r in st["probes"].items()},
                "majority": _brief(st["majority"]),
            }
            for key, st in studies.items()
        },
        "patches": next(iter(studies.values()))["patches"],
        "embed_seconds": round(seconds["embed"], 1),
        "fit_seconds": round(seconds["fit"], 1),
    }


def _brief(scores: dict[str, Any]) -> dict[str, float]:
    return {k: round(float(scores[k]), 4) for k in ("accuracy", "miou")}


_LABELS = {
    "pretrained": "pretrained encoder (the demo's model)",
    "random_init": "same encoder at random init (seed {seed})",
    "pixel_means": "patch means of the input pixels (no encoder)",
}


def probe_markdown(doc: dict[str, Any]) -> str:
    """The probe's table (``probe.md``, and the report's section)."""
    from terraloom.schemas.legends import LULC_CLASS_NAMES

    s = doc["setup"]
    studies = doc["inputs"]
    first = next(iter(studies.values()))
    n = first["patches"]
    lines = [
        f"A linear probe on frozen encoder embeddings: each {s['patch_px']} x {s['patch_px']} px "
        f"patch of the centre {s['image_px']} px crop, its embedding the mean of the input "
        f"modalities' tokens at that position (dim {s['dim']}), its label the patch's majority "
        f"land-cover class; a softmax regression fitted on {n['train']} train patches "
        f"({s['steps']} full-batch steps) and scored on {n['val']} val patches.",
        "",
        "| encoder inputs | features | accuracy | mIoU |",
        "|---|---|---|---|",
    ]
    for key, st in studies.items():
        for i, name in enumerate(FEATURES):
            r = st["probes"][name]
            label = _LABELS[name].format(seed=s["seed"])
            lines.append(
                f"| {key.replace('+', ' + ') if i == 0 else ''} | {label} | "
                f"{r['accuracy']:.3f} | {r['miou']:.3f} |"
            )
    maj = first["majority"]
    lines.append(
        f"| - | majority class ({LULC_CLASS_NAMES[maj['class']]}), no features | "
        f"{maj['accuracy']:.3f} | {maj['miou']:.3f} |"
    )
    lines.append("")
    for key, st in studies.items():
        pre, rnd = st["probes"]["pretrained"], st["probes"]["random_init"]
        lines.append(
            f"- {key.replace('+', ' + ')}: pretrained minus random init "
            f"{pre['accuracy'] - rnd['accuracy']:+.3f} accuracy, {pre['miou'] - rnd['miou']:+.3f} mIoU."
        )
    return "\n".join(lines)
