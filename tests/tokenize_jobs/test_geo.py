from __future__ import annotations

import numpy as np
import pytest
import torch

from terraloom.schemas.modalities import GEO_VOCAB
from terraloom.tokenize_jobs.protocol import SequenceTokenizer
from terraloom.tokenize_jobs.tokenizers.geo import GeoTokenizer


def _lon_error(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs((a - b + 180.0) % 360.0 - 180.0)


def test_random_points_round_trip_within_half_a_bin() -> None:
    tok = GeoTokenizer()
    rng = np.random.default_rng(0)
    latlon = np.stack([rng.uniform(-90, 90, 5000), rng.uniform(-180, 180, 5000)], axis=1)
    ids = tok.encode(latlon)
    assert ids.dtype == torch.int64 and ids.shape == (5000, 2)
    assert ids.min() >= 0 and ids.max() < tok.vocab_size == GEO_VOCAB
    assert (ids[:, 0] < 720).all() and (ids[:, 1] >= 720).all()  # separate ranges
    back = tok.decode(ids).numpy()
    assert np.abs(back[:, 0] - latlon[:, 0]).max() <= 0.125 + 1e-9
    assert _lon_error(back[:, 1], latlon[:, 1]).max() <= 0.125 + 1e-9


def test_edges_of_the_globe() -> None:
    tok = GeoTokenizer()
    pts = np.array([[90.0, 180.0], [-90.0, -180.0], [0.0, 0.0], [-0.0001, 179.9999]])
    ids = tok.encode(pts)
    assert ids[0, 0] == 719 and ids[1, 0] == 0
    assert ids[0, 1] == ids[1, 1] == 720  # 180 wraps to -180
    back = tok.decode(ids).numpy()
    assert np.abs(back[:, 0] - pts[:, 0]).max() <= 0.125
    assert _lon_error(back[:, 1], pts[:, 1]).max() <= 0.125 + 1e-9


def test_batch_api_pads_and_inverts() -> None:
    tok = GeoTokenizer()
    assert isinstance(tok, SequenceTokenizer)
    pts = np.array([[45.1, 7.6], [-33.9, 151.2]])
    ids, lengths = tok.encode_batch(pts, max_len=4)
    assert ids.shape == (2, 4) and (ids[:, 2:] == 0).all() and lengths.tolist() == [2, 2]
    back = tok.decode_batch(ids, lengths)
    assert back.dtype == torch.float64
    assert np.abs(back.numpy() - pts).max() <= 0.125
    assert tok.identity["id"] == "GEO-bins" and tok.identity["sha256"]


@pytest.mark.parametrize("bad", [[[91.0, 0.0]], [[np.nan, 0.0]], [[1.0, 2.0, 3.0]]])
def test_bad_values_are_rejected(bad: list[list[float]]) -> None:
    with pytest.raises(ValueError):
        GeoTokenizer().encode(np.array(bad))


def test_ids_outside_ranges_are_rejected() -> None:
    tok = GeoTokenizer()
    with pytest.raises(ValueError):
        tok.decode(torch.tensor([[720, 800]]))  # a lon id in the lat slot
    with pytest.raises(ValueError):
        tok.encode_batch(np.zeros((1, 2)), max_len=1)
