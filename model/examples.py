"""Generated examples on disk: per sample a GeoTIFF per image target, the tokens and
decoded sequences as JSON, and a PNG panel of inputs | generated | reference.

The panel is drawn by ``terraloom.render`` in the registry's display, so a generated DEM
and its reference share one colour scale and a missing reference is a labelled gap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terraloom.model.generate import (
    Conditioning,
    SamplingConfig,
    decode_tokens,
    generate,
)
from terraloom.model.geotiff import write_geotiff
from terraloom.model.samples import SampleRef
from terraloom.model.transformer import TerraloomModel
from terraloom.render import Panel, write_figure
from terraloom.schemas.modalities import get_modality

_SAMPLING = SamplingConfig()


def write_panel(
    path: str | os.PathLike[str],
    inputs: Mapping[str, Any],
    generated: Mapping[str, Any],
    references: Mapping[str, Any],
    title: str = "",
) -> Path:
    """One PNG: a row of inputs | generated | reference.

    Image values are (C, H, W) stored values; GEO (lat, lon) and captions are shown as
    text. A generated target without a reference gets a placeholder in its reference slot
    when some other target has one (inputs read from files have none at all).
    """
    row = [
        Panel(n, np.asarray(v) if not isinstance(v, str) else v, "input") for n, v in inputs.items()
    ]
    for n, v in generated.items():
        row.append(Panel(n, v if isinstance(v, str) else np.asarray(v), "generated"))
        if n in references:
            ref = references[n]
            row.append(Panel(n, ref if isinstance(ref, str) else np.asarray(ref), "reference"))
        elif references:
            row.append(Panel(n, None, "reference", "not in the corpus"))
    return write_figure(path, [row], title, dpi=90)


def _to_display(name: str, value: Any, i: int) -> Any:
    if isinstance(value, list):
        return value[i]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    return np.asarray(value)[i]


def write_examples(
    model: TerraloomModel,
    tokenizers: Mapping[str, Any],
    cond: Conditioning,
    refs: Sequence[SampleRef],
    targets: Sequence[str],
    out: str | os.PathLike[str],
    cfg: SamplingConfig | Mapping[str, SamplingConfig] = _SAMPLING,
    *,
    seed: int = 0,
    chain: bool = True,
    references: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Generate ``targets`` for every sample of ``cond`` and write, per sample, under
    ``out/<sample_id>/``: ``<TARGET>.tif`` (image targets, in the sample's CRS on the crop's
    grid), ``generated.json`` (GEO, CAPTION, token ids) and ``panel.png``.

    Returns one record per sample with the written paths.
    """
    targets = [get_modality(t).name for t in targets]
    missing = [t for t in targets if t not in tokenizers]
    if missing:
        raise ValueError(f"no tokenizer for {missing}: tokens cannot be decoded to pixels")
    gen = generate(model, cond, targets, cfg, seed=seed, chain=chain)
    decoded = {
        t: _cpu_any(
            decode_tokens(
                tokenizers[t], t, gen.tokens[t].cpu(), gen.lengths.get(t), gen.probs.get(t)
            )
        )
        for t in targets
    }
    shown_inputs: dict[str, Any] = {n: v.cpu().numpy() for n, v in cond.pixels.items()}
    for n, v in cond.tokens.items():
        if n not in shown_inputs and n in tokenizers:
            shown_inputs[n] = _cpu_any(
                decode_tokens(tokenizers[n], n, v.cpu(), cond.lengths.get(n))
            )
    records = []
    for i, ref in enumerate(refs):
        d = Path(out) / _safe(ref.sample_id)
        d.mkdir(parents=True, exist_ok=True)
        rec: dict[str, Any] = {
            "sample_id": ref.sample_id,
            "split": ref.split,
            "row": ref.row,
            "epsg": ref.epsg,
            "dir": str(d),
            "files": {},
        }
        meta: dict[str, Any] = {"sample_id": ref.sample_id, "crop": list(ref.crop), "targets": {}}
        for t in targets:
            v = _to_display(t, decoded[t], i)
            entry: dict[str, Any] = {"tokens": gen.tokens[t][i].cpu().tolist()}
            if t in gen.lengths:
                entry["length"] = int(gen.lengths[t][i])
            if get_modality(t).is_image:
                rec["files"][t] = str(write_geotiff(d / f"{t}.tif", v, ref, t))
            elif t == "GEO":
                entry["lat"], entry["lon"] = (float(a) for a in np.asarray(v).ravel()[:2])
            else:
                entry["text"] = str(v)
            meta["targets"][t] = entry
        (d / "generated.json").write_text(json.dumps(meta, indent=2))
        rec["files"]["json"] = str(d / "generated.json")
        refs_i = {n: _to_display(n, v, i) for n, v in (references or {}).items() if n in targets}
        rec["files"]["panel"] = str(
            write_panel(
                d / "panel.png",
                {n: _to_display(n, v, i) for n, v in shown_inputs.items()},
                {t: _to_display(t, decoded[t], i) for t in targets},
                refs_i,
                title=f"{ref.sample_id}: {' + '.join(cond.modalities)} -> {' -> '.join(targets)}",
            )
        )
        records.append(rec)
    return records


def _cpu_any(x: Any) -> Any:
    return x.cpu() if isinstance(x, torch.Tensor) else x


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
