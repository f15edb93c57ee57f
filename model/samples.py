"""Corpus samples as generation inputs: where a crop sits on the ground, its pixels and
tokens, and the stored values a generated modality is compared with.

A crop is the token store's (the one the tokens were encoded from) or, without a token
store, the centred crop; ``SampleRef`` carries the sample's CRS and the crop's grid so the
outputs are georeferenced.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from terraloom.model.config import PIXEL_SUFFIX, TOKEN_SUFFIX
from terraloom.model.generate import Conditioning
from terraloom.model.transformer import TerraloomModel
from terraloom.schemas.modalities import Layout, get_modality


@dataclass(frozen=True)
class SampleRef:
    """Where a crop sits on the ground: for GeoTIFF outputs."""

    sample_id: str
    split: str
    row: int
    crop: tuple[int, int, int, int, int]  # top, left, h, w, flip
    epsg: int
    transform: tuple[float, float, float, float, float, float]  # sample grid (a, b, c, d, e, f)

    def crop_transform(self) -> tuple[float, float, float, float, float, float]:
        """The sample's affine shifted by (left, top) pixels: the crop's own grid."""
        a, b, c, d, e, f = self.transform
        top, left = self.crop[0], self.crop[1]
        return (a, b, c + a * left + b * top, d, e, f + d * left + e * top)


def lookup_sample(corpus: str | os.PathLike[str], sample_id: str) -> tuple[str, int]:
    """(split, row) of a sample id from ``index.parquet``; an unknown id is bad input
    (``ValueError``), not a lookup bug."""
    import pyarrow.parquet as pq

    path = Path(corpus) / "index.parquet"
    if not path.is_file():
        raise FileNotFoundError(
            f"no index.parquet in {corpus}; cannot look up sample {sample_id!r}"
        )
    t = pq.read_table(path, columns=["sample_id", "split", "row"])
    ids = t.column("sample_id").to_pylist()
    try:
        i = ids.index(sample_id)
    except ValueError:
        raise ValueError(f"sample {sample_id!r} is not in {path}") from None
    return str(t.column("split")[i].as_py()), int(t.column("row")[i].as_py())


def sample_ids(corpus: str | os.PathLike[str], split: str) -> dict[int, str]:
    """Row -> sample id of a split (empty when the corpus has no index)."""
    import pyarrow.parquet as pq

    path = Path(corpus) / "index.parquet"
    if not path.is_file():
        return {}
    t = pq.read_table(path, columns=["sample_id", "split", "row"])
    return {
        int(r): str(s)
        for s, sp, r in zip(
            t.column("sample_id").to_pylist(),
            t.column("split").to_pylist(),
            t.column("row").to_pylist(),
        )
        if sp == split
    }


class SampleReader:
    """Crops of corpus rows (pixels) and their tokens, aligned by the token store's crops."""

    def __init__(
        self, corpus: str | os.PathLike[str], tokens: str | os.PathLike[str] | None, split: str
    ) -> None:
        import zarr

        self.corpus = Path(corpus)
        self.split = split
        path = self.corpus / f"{split}.zarr"
        if not (path / "zarr.json").exists():
            raise FileNotFoundError(f"no corpus split {split!r} at {path}")
        self.group: Any = cast(Any, zarr.open_group(str(path), mode="r"))
        self.store: Any = None
        if tokens is not None:
            from terraloom.tokenize_jobs.store import TokenStore

            self.store = TokenStore(Path(tokens) / f"{split}.zarr")
        self.valid = np.asarray(self.group["valid"][:], bool)
        if self.store is not None:
            self.valid &= np.asarray(self.store.valid, bool)
        self._ids = sample_ids(self.corpus, split)

    @property
    def valid_rows(self) -> np.ndarray:
        return np.flatnonzero(self.valid)

    def crops(self, rows: np.ndarray, crop_idx: int = 0) -> np.ndarray:
        """(B, 5) crops: the token store's when there is one, else the centred crop."""
        from terraloom.tokenize_jobs.crops import centre_crop

        if self.store is not None:
            return self.store.batch(rows, crop_idx, [])["crops"].numpy()
        return np.repeat(centre_crop()[None], len(rows), 0)

    def pixels(self, name: str, rows: np.ndarray, crops: np.ndarray) -> torch.Tensor:
        """(B, C, h, w) stored values of the crops (flips applied as stored)."""
        from terraloom.tokenize_jobs.crops import apply_crops

        m = get_modality(name)
        arr = self.group[m.name]
        if m.is_image:
            samples = np.stack([np.asarray(arr[int(r)]) for r in rows])
            return torch.from_numpy(
                np.ascontiguousarray(apply_crops(samples, crops)).astype(np.float32)
            )
        return torch.from_numpy(np.stack([np.asarray(arr[int(r)]) for r in rows]))

    def tokens(
        self, names: Sequence[str], rows: np.ndarray, crop_idx: int = 0
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        if self.store is None:
            raise ValueError("no token store given")
        got = self.store.batch(rows, crop_idx, list(names))
        toks = {n: got[n] for n in names}
        lens = {n: got[f"{n}_len"] for n in names if f"{n}_len" in got}
        for n in names:
            if get_modality(n).layout is Layout.VECTOR and n not in lens:
                lens[n] = torch.full((len(rows),), toks[n].shape[1], dtype=torch.long)
        return toks, lens

    def refs(self, rows: np.ndarray, crops: np.ndarray) -> list[SampleRef]:
        epsg = np.asarray(self.group["epsg"][:])
        tr = np.asarray(self.group["transform"][:])
        return [
            SampleRef(
                self._ids.get(int(r), f"{self.split}/row-{int(r)}"),
                self.split,
                int(r),
                cast(tuple[int, int, int, int, int], tuple(int(v) for v in c)),
                int(epsg[r]),
                cast(
                    tuple[float, float, float, float, float, float], tuple(float(v) for v in tr[r])
                ),
            )
            for r, c in zip(rows, crops)
        ]

    def conditioning(
        self,
        model: TerraloomModel,
        modalities: Sequence[str],
        rows: np.ndarray,
        crop_idx: int = 0,
        *,
        scales: str = "both",
    ) -> Conditioning:
        """Inputs of ``modalities`` for ``rows`` at the scales the model takes them.

        ``scales``: "both", "pixels" or "tokens".
        """
        rows = np.asarray(rows, np.int64)
        crops = self.crops(rows, crop_idx)
        keys = {s.key for s in model.specs.inputs}
        cond = Conditioning()
        tok_names = []
        for n in modalities:
            name = get_modality(n).name
            took = False
            if scales in ("both", "pixels") and name + PIXEL_SUFFIX in keys:
                cond.pixels[name] = self.pixels(name, rows, crops)
                took = True
            if (
                scales in ("both", "tokens")
                and name + TOKEN_SUFFIX in keys
                and self.store is not None
                and name in self.store.modalities
            ):
                tok_names.append(name)
                took = True
            if not took:
                raise ValueError(
                    f"cannot feed {name} ({scales}) to this model or no tokens stored for it"
                )
        if tok_names:
            toks, lens = self.tokens(tok_names, rows, crop_idx)
            cond.tokens.update(toks)
            cond.lengths.update(lens)
        return cond


def reference_values(
    reader: SampleReader, names: Sequence[str], rows: np.ndarray, crops: np.ndarray
) -> dict[str, Any]:
    """Stored values of ``names`` for the crops (GEO as (B, 2) lat/lon, CAPTION as text)."""
    out: dict[str, Any] = {}
    for n in names:
        m = get_modality(n)
        if m.name not in set(reader.group.array_keys()):
            continue
        v = reader.pixels(m.name, rows, crops)
        if m.layout is Layout.TEXT:
            out[m.name] = [
                bytes(np.asarray(r, np.uint8)).rstrip(b"\0").decode("utf-8", "replace")
                for r in v.numpy()
            ]
        else:
            out[m.name] = v
    return out
