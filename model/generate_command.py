"""The ``terraloom-model generate`` command: inputs from corpus samples or GeoTIFFs,
targets generated and written as examples (``model.examples``).

The argument parser lives in ``model.cli``; this module turns its parsed arguments into a
checkpoint, tokenizers, a conditioning and the written examples.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terraloom.model.checkpoint import checkpoint_data_paths, resolve_checkpoint
from terraloom.model.config import PIXEL_SUFFIX, TOKEN_SUFFIX
from terraloom.model.data import local_root
from terraloom.model.examples import write_examples
from terraloom.model.generate import Conditioning, SamplingConfig
from terraloom.model.geotiff import read_geotiff
from terraloom.model.samples import SampleReader, SampleRef, lookup_sample, reference_values
from terraloom.model.transformer import TerraloomModel
from terraloom.schemas.modalities import get_modality
from terraloom.storage.location import Location, LocationError, parse_storage_options
from terraloom.storage.transfer import cache_dir, upload_tree
from terraloom.tokenize_jobs.tokenizers.io import MissingTokenizerError, load_tokenizers

#: SamplingConfig field <- the ``generate`` flag (argparse dest) that sets it.
SAMPLING_FLAGS = {
    "steps": "steps",
    "schedule": "schedule",
    "order": "order",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "cfg_scale": "cfg",
    "decode": "decode",
}


def parse_inputs(items: Sequence[str]) -> dict[str, str]:
    """``["S1GRD=sample_id", "DEM=path.tif"]`` -> {"S1GRD": ..., "DEM": ...}."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value.strip():
            raise ValueError(f"--input {item!r} is not MODALITY=SAMPLE_ID|PATH")
        out[get_modality(name).name] = value.strip()
    if not out:
        raise ValueError("give at least one --input MODALITY=SAMPLE_ID|PATH")
    return out


def command_locations(args: Any, *names: str) -> dict[str, Location | None]:
    """The named path/URL arguments of a model command as Locations, all parsed before
    anything runs (a malformed URL is a one-line ``LocationError``, exit 2), with the
    command's ``--storage-option`` items attached."""
    opts = parse_storage_options(getattr(args, "storage_option", None))
    return {
        n: None if getattr(args, n, None) is None else Location.parse(getattr(args, n), opts)
        for n in names
    }


def publish_outputs(stage: Path, out: Location, records: Any) -> Any:
    """Upload a staged output folder to a remote ``--out``; the records name the remote
    objects instead of the stage's files."""
    upload_tree(stage, out)
    text = json.dumps(records).replace(json.dumps(str(stage))[1:-1], str(out))
    return json.loads(text)


def output_stage(out: Location) -> Path:
    """Where a command writes its outputs: ``--out`` itself when local, else a fresh folder
    of the local cache that :func:`publish_outputs` uploads."""
    if out.read_only:
        raise LocationError(f"{out} is read-only ({out.scheme}://)")
    if out.is_local:
        return out.local_path
    stage = cache_dir(out, "outputs")
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    return stage


def run_generate_command(args: Any) -> int:
    """``terraloom-model generate`` (see ``model.cli``). Every location may be a URL: the
    checkpoint, token store, corpus and tokenizers are read through the local cache, a
    remote ``--out`` is written locally and uploaded."""
    locs = command_locations(args, "checkpoint", "out", "tokens", "corpus", "tokenizers")
    out = locs["out"]
    assert out is not None and locs["checkpoint"] is not None  # required arguments
    opts = out.storage_options
    device = torch.device(args.device)
    ckpt = resolve_checkpoint(locs["checkpoint"])
    model = TerraloomModel.from_pretrained(ckpt, map_location=device).eval()
    paths = checkpoint_data_paths(ckpt)
    tokens_loc = locs["tokens"] or (
        Location.parse(paths["tokens"], opts) if paths.get("tokens") else None
    )
    corpus_loc = locs["corpus"] or (
        Location.parse(paths["corpus"], opts) if paths.get("corpus") else None
    )
    inputs = parse_inputs(args.input)
    targets = [get_modality(t).name for t in args.target.split(",") if t.strip()]
    if not targets:
        raise ValueError("--target needs at least one modality")
    tok_root: Location | Path
    if locs["tokenizers"] is not None:
        tok_root = locs["tokenizers"]
    elif tokens_loc is not None:
        tok_root = tokens_loc.parent / "tokenizers"
    else:
        raise ValueError("--tokenizers is needed (no token store to find them next to)")
    tokens_root = local_root(tokens_loc, "tokens", opts) if tokens_loc is not None else None
    corpus_arg = str(local_root(corpus_loc, "corpus", opts)) if corpus_loc is not None else None
    tokenizers: dict[str, Any] = {}
    for n in dict.fromkeys([*targets, *inputs]):
        try:
            tokenizers.update(load_tokenizers(tok_root, [n], device))
        except MissingTokenizerError:
            if n in targets:
                raise
    cfg = SamplingConfig(**{field: getattr(args, flag) for field, flag in SAMPLING_FLAGS.items()})
    files = {n: v for n, v in inputs.items() if Path(v).is_file()}
    ids = {n: v for n, v in inputs.items() if n not in files}
    if files and ids:
        raise ValueError("mixing sample ids and files in --input is not supported")
    cond = Conditioning()
    references: dict[str, Any] = {}
    refs: list[SampleRef] = []
    keys = {s.key for s in model.specs.inputs}
    if ids:
        if len(set(ids.values())) > 1:
            raise ValueError(
                f"inputs name different samples {sorted(set(ids.values()))}; generate from one sample at a time"
            )
        sample_id = next(iter(ids.values()))
        if not corpus_arg:
            raise ValueError(
                "--corpus is needed to look up sample ids (the checkpoint records none)"
            )
        split, row = lookup_sample(corpus_arg, sample_id)
        has_tokens = (
            tokens_root is not None and (tokens_root / f"{split}.zarr" / "zarr.json").is_file()
        )
        reader = SampleReader(corpus_arg, tokens_root if has_tokens else None, split)
        rows = np.array([row])
        cond = reader.conditioning(model, list(ids), rows, args.crop, scales=args.scales)
        crops = reader.crops(rows, args.crop)
        refs = reader.refs(rows, crops)
        references = reference_values(reader, targets, rows, crops)
    for n, path in files.items():
        px, ref = read_geotiff(path, n, model.cfg.image_px)
        refs = [ref]
        if n + PIXEL_SUFFIX in keys and args.scales in ("both", "pixels"):
            cond.pixels[n] = px
        if n + TOKEN_SUFFIX in keys and args.scales in ("both", "tokens") and n in tokenizers:
            cond.tokens[n] = tokenizers[n].encode(px.to(device)).reshape(1, -1).cpu()
        if n not in cond.pixels and n not in cond.tokens:
            raise ValueError(
                f"the model cannot take {n} from a file (no pixel input, no tokenizer for its tokens)"
            )
    stage = output_stage(out)
    records = write_examples(
        model,
        tokenizers,
        cond,
        refs,
        targets,
        stage,
        cfg,
        seed=args.seed,
        chain=not args.no_chain,
        references=references,
    )
    if not out.is_local:
        records = publish_outputs(stage, out, records)
    for r in records:
        print(json.dumps(r, indent=2))
    return 0
