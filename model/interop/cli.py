"""``terraloom-model import-terramind | export-terramind | embed`` (added to model.cli)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _run_import(args: argparse.Namespace) -> int:
    from terraloom.model.interop.terramind import import_terramind
    from terraloom.model.interop.weights import read_state_dict
    from terraloom.model.transformer import TerraloomModel

    cfg, state, report = import_terramind(read_state_dict(args.checkpoint), args.variant)
    model = TerraloomModel(cfg, init=False)
    model.load_state_dict(state, strict=True)
    out = Path(args.out)
    model.save_pretrained(out)
    (out / "interop.json").write_text(
        json.dumps(
            {
                "source": "terramind_v1",
                "checkpoint": Path(args.checkpoint).name,
                "variant": report.variant,
                "pixel_inputs": list(report.pixel_inputs),
                "token_inputs": list(report.token_inputs),
                "targets": list(report.targets),
                "left_out": report.skipped,
            },
            indent=2,
        )
    )
    for line in report.lines():
        print(line)
    print(f"wrote {out}")
    return 0


def add_import_terramind_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "import-terramind",
        help="convert a TerraMind v1 checkpoint into terraloom weights",
        description="Exact mapping of a TerraMind v1 encoder-decoder state dict (the released "
        "TerraMind_v1_*.pt) into model.safetensors + config.json; modalities that do not map "
        "(coordinates, captions) are listed, never dropped silently.",
    )
    p.add_argument("--checkpoint", required=True, help="TerraMind .pt/.safetensors state dict")
    p.add_argument(
        "--variant", choices=("tiny", "small", "base", "large"), help="checked against the shapes"
    )
    p.add_argument("--out", required=True, help="output directory (usable by train --init)")
    p.set_defaults(func=_run_import)
    return p


def _run_export(args: argparse.Namespace) -> int:
    from terraloom.model.interop.terramind import export_terramind
    from terraloom.model.interop.weights import load_weights, write_state_dict

    cfg, state = load_weights(args.run_dir)
    sd = export_terramind(state, cfg, backbone=args.backbone)
    write_state_dict(sd, args.out)
    print(
        f"wrote {args.out}: {len(sd)} tensors ({'backbone' if args.backbone else 'encoder-decoder'})"
    )
    return 0


def add_export_terramind_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export-terramind",
        help="write terraloom weights as a TerraMind v1 state dict",
        description="The encoder-decoder layout of TerraMind_v1_*.pt (or, with --backbone, the "
        "encoder only, as terratorch's terramind_v1_* backbone holds it); loads with strict=True.",
    )
    p.add_argument("run_dir", help="weights directory or run directory (its latest checkpoint)")
    p.add_argument("--out", required=True, help="output .pt (torch.save) or .safetensors")
    p.add_argument("--backbone", action="store_true", help="encoder side only (TerraMindViT)")
    p.set_defaults(func=_run_export)
    return p


def _run_embed(args: argparse.Namespace) -> int:
    from terraloom.model.interop.embed import EmbedConfig, embed

    cfg = EmbedConfig(
        checkpoint=args.checkpoint,
        corpus=args.corpus,
        out=args.out,
        modalities=tuple(m.strip() for m in args.modalities.split(",") if m.strip()),
        split=args.split,
        batch=args.batch,
        per_patch=args.per_patch,
        device=args.device,
        max_samples=args.max_samples,
    )
    report = embed(cfg)
    print(json.dumps(report))
    return 0


def add_embed_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "embed",
        help="per-sample (and per-patch) encoder embeddings of a corpus split",
        description="GeoParquet of per-sample embeddings (Major TOM embedding convention: id, "
        "grid cell, footprint geometry, time, embedding), optionally per-patch embeddings as Zarr; "
        "resumable per batch of rows, ranks split the rows under torchrun.",
    )
    p.add_argument("--checkpoint", required=True, help="weights directory or run directory")
    p.add_argument("--corpus", required=True, help="corpus root (holds <split>.zarr + index)")
    p.add_argument("--modalities", required=True, help="pixel inputs, e.g. S2L2A,S1GRD")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--split", default="val")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument(
        "--per-patch", action="store_true", help="also write per-patch embeddings (Zarr)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--max-samples", type=int, default=None)
    p.set_defaults(func=_run_embed)
    return p
