"""GEO tokenizer: latitude and longitude binned at a fixed step, no training.

One vocabulary holds both ranges: latitude bins first (``180 / step`` ids), then
longitude bins (``360 / step`` ids), so a sample is exactly two tokens and a decoded
point is its bin centre (error <= step / 2 per coordinate).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import torch

from terraloom.schemas.modalities import GEO_BIN_DEG
from terraloom.tokenize_jobs.protocol import TOKENIZER_FORMAT_VERSION


class GeoTokenizer:
    """Deterministic lat/lon bins behind the ``SequenceTokenizer`` protocol."""

    modality = "GEO"

    def __init__(self, bin_deg: float = GEO_BIN_DEG) -> None:
        n_lat, n_lon = 180 / bin_deg, 360 / bin_deg
        if bin_deg <= 0 or abs(n_lat - round(n_lat)) > 1e-9 or abs(n_lon - round(n_lon)) > 1e-9:
            raise ValueError(f"bin size {bin_deg} must divide 180 degrees evenly")
        self.bin_deg = float(bin_deg)
        self.n_lat = round(n_lat)
        self.n_lon = round(n_lon)
        self.vocab_size = self.n_lat + self.n_lon
        self.identity = {
            "id": "GEO-bins",
            "version": f"{TOKENIZER_FORMAT_VERSION}.{self.digest()[:12]}",
            "sha256": self.digest(),
        }

    def config_dict(self) -> dict[str, Any]:
        return {"modality": "GEO", "kind": "geo_bins", "bin_deg": self.bin_deg}

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.config_dict(), sort_keys=True).encode()).hexdigest()

    def encode(self, latlon: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, 2) lat, lon degrees -> (B, 2) int64 ids (lat id, lon id)."""
        x = torch.as_tensor(np.asarray(latlon, dtype=np.float64))
        if x.dim() != 2 or x.shape[1] != 2:
            raise ValueError(f"GEO values must be (B, 2) lat/lon, got shape {tuple(x.shape)}")
        if not bool(torch.isfinite(x).all()):
            raise ValueError("GEO values must be finite")
        lat, lon = x[:, 0], x[:, 1]
        if bool((lat.abs() > 90).any()):
            raise ValueError("latitude outside [-90, 90]")
        lat_id = torch.floor((lat + 90.0) / self.bin_deg).long().clamp(0, self.n_lat - 1)
        lon_wrapped = torch.remainder(lon + 180.0, 360.0)
        lon_id = torch.floor(lon_wrapped / self.bin_deg).long().clamp(0, self.n_lon - 1)
        return torch.stack([lat_id, self.n_lat + lon_id], dim=1)

    def decode(self, ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, 2) ids -> (B, 2) float64 bin centres (lat, lon in [-180, 180))."""
        ids = torch.as_tensor(ids).long()
        lat_id, lon_id = ids[:, 0], ids[:, 1] - self.n_lat
        if bool(((lat_id < 0) | (lat_id >= self.n_lat)).any()):
            raise ValueError(f"latitude ids must lie in [0, {self.n_lat})")
        if bool(((lon_id < 0) | (lon_id >= self.n_lon)).any()):
            raise ValueError(f"longitude ids must lie in [{self.n_lat}, {self.vocab_size})")
        lat = (lat_id.double() + 0.5) * self.bin_deg - 90.0
        lon = (lon_id.double() + 0.5) * self.bin_deg - 180.0
        return torch.stack([lat, lon], dim=1)

    def encode_batch(self, values: object, max_len: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2) lat/lon -> (ids (B, max_len) zero padded, lengths (B,) all 2)."""
        if max_len < 2:
            raise ValueError("GEO needs max_len >= 2 (two tokens per sample)")
        tokens = self.encode(values)  # type: ignore[arg-type]
        ids = torch.zeros((tokens.shape[0], max_len), dtype=torch.int64)
        ids[:, :2] = tokens
        return ids, torch.full((tokens.shape[0],), 2, dtype=torch.int64)

    def decode_batch(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        if bool((torch.as_tensor(lengths) < 2).any()):
            raise ValueError("every GEO sequence needs its two tokens")
        return self.decode(torch.as_tensor(ids)[:, :2])
