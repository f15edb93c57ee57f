"""Token-store and corpus reads, pixel crops, loader determinism, resume and rank slices."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

from terraloom.model.config import Kind, modality_specs
from terraloom.model.data import (
    CorpusPixels,
    EpochOrder,
    MaskedBatches,
    TokenLoader,
    _ShardRows,
)
from terraloom.schemas.modalities import get_modality
from terraloom.tokenize_jobs.crops import apply_crop
from terraloom.tokenize_jobs.store import TokenStore

TOKEN_ARRAYS = ("S2L2A", "S1GRD", "LULC", "NDVI", "GEO", "CAPTION")


@pytest.mark.parametrize("mode", ["memory", "memmap", "zarr"])
def test_token_store_arrays_match_zarr(toy_world, mode) -> None:
    """The loader's read (``TokenStore.arrays``, NumPy int64) in every read mode."""
    path = toy_world.tokens / "train.zarr"
    store = TokenStore(path, mode=mode)
    g = zarr.open_group(str(path), mode="r")
    rows = np.array([31, 0, 17, 5, 17])
    crops = np.array([1, 0, 0, 1, 1])
    got = store.arrays(rows, crops, TOKEN_ARRAYS)
    for name in (*TOKEN_ARRAYS, "crops", "CAPTION_len"):
        want = np.stack([np.asarray(g[name][r, c]) for r, c in zip(rows, crops)])
        assert got[name].dtype == np.int64
        assert np.array_equal(got[name], want), name
    assert store.valid.all() and store.n_crops == 2 and store.crop_px == 224
    with pytest.raises(IndexError):
        store.arrays(np.array([32]), np.array([0]), ("LULC",))


def test_corpus_rows_and_patches_match_a_manual_crop(toy_world) -> None:
    path = toy_world.corpus / "train.zarr"
    arr = zarr.open_group(str(path), mode="r")["S2L2A"]
    fast = _ShardRows.open(path / "S2L2A")
    assert fast is not None
    for row in (0, 15, 16, 31):
        assert np.array_equal(fast(row), np.asarray(arr[row]))
    px = CorpusPixels(path, 224, 16)
    m = get_modality("S2L2A")
    crops = np.array(
        [[10, 30, 224, 224, 0], [40, 3, 224, 224, 1], [0, 40, 224, 224, 2], [7, 9, 224, 224, 3]]
    )
    pos = [np.array([0, 13, 14, 195]), np.array([1, 100]), np.array([2, 190]), np.array([0, 57])]
    rows = (3, 7, 16, 31)
    got = px.patches("S2L2A", np.array(rows), crops, pos)
    want = []
    for row, crop, ps in zip(rows, crops, pos):
        c = apply_crop(np.asarray(arr[row]), crop).astype(np.float32)  # the encoder's own cut
        c = (c - np.asarray(m.mean, np.float32)[:, None, None]) / np.asarray(m.std, np.float32)[
            :, None, None
        ]
        for p in ps:
            y, x = divmod(int(p), 14)
            want.append(c[:, y * 16 : y * 16 + 16, x * 16 : x * 16 + 16].reshape(-1))
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-6, atol=1e-6)


def test_epoch_order_covers_valid_rows_once_and_splits_ranks() -> None:
    rows = np.array([0, 2, 3, 5, 8, 9, 11, 12, 13, 20])
    order = EpochOrder(rows, n_crops=3, global_batch=4, seed=1)
    perm, crops = order.epoch(0)
    assert sorted(perm.tolist()) == rows.tolist() and crops.max() < 3
    assert order.batches_per_epoch == 2
    assert not np.array_equal(perm, order.epoch(1)[0])
    r0 = EpochOrder(rows, 3, 4, 1, rank=0, world=2).local_positions(1)
    r1 = EpochOrder(rows, 3, 4, 1, rank=1, world=2).local_positions(1)
    assert np.concatenate([r0, r1]).tolist() == order.local_positions(1).tolist()
    with pytest.raises(ValueError, match="divisible"):
        EpochOrder(rows, 3, 5, 1, world=2)


@pytest.fixture
def make_dataset(toy_world, small_model, small_masking):
    def make(**kw):
        return MaskedBatches(
            toy_world.tokens / "train.zarr",
            toy_world.corpus / "train.zarr",
            small_model,
            small_masking,
            global_batch=8,
            seed=3,
            **kw,
        )

    return make


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_loader_is_deterministic_and_resumes_mid_epoch(
    make_dataset, small_model, small_masking
) -> None:
    ds = make_dataset()
    assert len(ds) == 4
    full = list(TokenLoader(ds, num_workers=0, max_batches=6))  # crosses into epoch 1
    first = TokenLoader(ds, num_workers=0, max_batches=3)
    head = list(first)
    assert first.state_dict() == {"epoch": 0, "batch": 3}
    resumed = TokenLoader(ds, num_workers=1, max_batches=3)  # worker process path
    resumed.load_state_dict(first.state_dict())
    tail = list(resumed)
    assert resumed.state_dict() == {"epoch": 1, "batch": 2}
    assert all(_same(a, b) for a, b in zip(full, head + tail))
    assert not _same(full[0], full[4])  # new epoch, new order and masks
    b = full[0]
    specs = modality_specs(small_model)
    assert b["enc_ids"].shape == (8, small_masking.input_budget) and b["tgt_ids"].shape == (
        8,
        small_masking.target_budget,
    )
    assert int((~b["enc_pad"]).sum()) == 8 * small_masking.input_budget
    for s in specs.inputs:
        if s.kind is Kind.PIXELS:
            assert b[f"pix.{s.key}"].dtype == torch.float16


def test_rank_slices_equal_the_global_batch(make_dataset, small_model) -> None:
    whole = make_dataset()[(0, 1)]
    parts = [make_dataset(rank=r, world=2)[(0, 1)] for r in range(2)]
    for k in (
        "enc_ids",
        "enc_mod",
        "enc_pos",
        "enc_pad",
        "tgt_ids",
        "tgt_prev",
        "tgt_mod",
        "tgt_pos",
        "tgt_pad",
        "n_in",
        "n_tgt",
    ):
        assert torch.equal(torch.cat([p[k] for p in parts]), whole[k]), k
    for s in modality_specs(small_model).inputs:
        if s.kind is Kind.PIXELS:
            assert torch.equal(torch.cat([p[f"pix.{s.key}"] for p in parts]), whole[f"pix.{s.key}"])


def test_dataset_rejects_inconsistent_setups(toy_world, small_model, small_masking) -> None:
    with pytest.raises(ValueError, match="no corpus"):
        MaskedBatches(
            toy_world.tokens / "train.zarr", None, small_model, small_masking, global_batch=8
        )
    with pytest.raises(ValueError, match="fewer than one global batch"):
        MaskedBatches(
            toy_world.tokens / "train.zarr",
            toy_world.corpus / "train.zarr",
            small_model,
            small_masking,
            global_batch=64,
        )
    with pytest.raises(FileNotFoundError):
        MaskedBatches(
            toy_world.tokens / "nope.zarr",
            None,
            replace(small_model, pixel_inputs=()),
            small_masking,
            global_batch=8,
        )


@pytest.mark.parametrize("mode", ["memmap", "zarr"])
def test_store_mode_is_used_and_gives_the_same_batches(make_dataset, mode) -> None:
    """A big store is read memory-mapped (or through zarr) on request, in workers too,
    with batches identical to the in-RAM read."""
    ds = make_dataset(store_mode=mode)
    assert ds._store.mode == mode
    ref = make_dataset(store_mode="memory")
    assert _same(ds[(0, 2)], ref[(0, 2)])
    (got,) = list(TokenLoader(ds, num_workers=1, max_batches=1))
    assert _same(got, ref[(0, 0)])


def test_workers_keep_the_parent_view_of_the_store(toy_world, small_model, tmp_path) -> None:
    """Workers copy the opened store (valid rows included) instead of re-opening it: the
    epoch order was drawn from the parent's valid rows, and re-opening re-reads every commit
    marker (tens of thousands at a million samples) in every worker."""
    import shutil

    from terraloom.model.config import MaskingConfig

    tokens = tmp_path / "train.zarr"
    shutil.copytree(toy_world.tokens / "train.zarr", tokens)
    ds = MaskedBatches(
        tokens, None, replace(small_model, pixel_inputs=()), MaskingConfig(48, 48), global_batch=8
    )
    ref = ds[(0, 1)]
    # a marker directory appears after opening: a re-opened store would see only shard 0
    # committed and refuse rows of the others
    (tmp_path / "_commits" / "train").mkdir(parents=True)
    (tmp_path / "_commits" / "train" / "shard-000000.json").write_text('{"shard": 0}')
    fresh = TokenStore(tokens)
    assert fresh.valid.sum() < ds._store.valid.sum()
    got = list(TokenLoader(ds, num_workers=1, max_batches=2))
    assert _same(got[1], ref)
