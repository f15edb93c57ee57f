"""Token-store and corpus reads, pixel crops, loader determinism, resume and rank slices."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

from terraloom.model.config import Kind, modality_specs
from terraloom.model.data import CorpusPixels, MaskedBatches, TokenLoader, _ShardRows
from terraloom.model.order import BlockOrder, EpochOrder
from terraloom.model.packed import PackedBatch
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
@pytest.mark.parametrize("order", ["random", "block"])
def test_store_mode_is_used_and_gives_the_same_batches(make_dataset, mode, order) -> None:
    """A big store is read memory-mapped (or through zarr) on request, in workers too,
    with batches identical to the in-RAM read, in either order."""
    ds = make_dataset(store_mode=mode, order=order)
    assert ds._store.mode == mode and ds.order_kind == order
    ref = make_dataset(store_mode="memory", order=order)
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


# --------------------------------------------------------------------------- block order


def _block(rows, *, world=1, rank=0, seed=1, chunk_rows=8, buffer=16, global_batch=8, crops=3):
    return BlockOrder(rows, crops, global_batch, seed, rank, world, chunk_rows, buffer)


def _epoch_stream(order: BlockOrder, epoch: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, crops, positions) of each local batch of ``order``'s rank in ``epoch``."""
    out = []
    for i in range(order.batches_per_epoch):
        w, off = order.locate(i)
        win = order.window(epoch, w)
        sel = slice(off, off + order.local_batch)
        out.append((win.rows[sel], win.crops[sel], win.positions[sel]))
    return out


# valid rows with gaps (whole chunks and single rows missing), 10 chunks of 8 rows
GAPPY = np.setdiff1d(np.arange(80), [3, 8, 9, 10, 11, 12, 13, 14, 15, 40, 41, 77])


@pytest.mark.parametrize("world", [1, 2, 4])
def test_block_order_shards_ranks_disjointly_and_sees_each_row_once(world) -> None:
    rows = np.arange(96)  # 12 chunks of 8; 96 = 12 global batches of 8: nothing left over
    seen = []
    for rank in range(world):
        order = _block(rows, world=world, rank=rank)
        assert order.batches_per_epoch == 12 and order.local_batch == 8 // world
        batches = _epoch_stream(order, 0)
        assert all(len(b[0]) == order.local_batch for b in batches)
        seen.append(np.concatenate([b[0] for b in batches]))
    every = np.concatenate(seen)
    assert sorted(every.tolist()) == rows.tolist()  # exactly once, ranks disjoint
    positions = np.concatenate(
        [
            np.concatenate([b[2] for b in _epoch_stream(_block(rows, world=world, rank=r), 0)])
            for r in range(world)
        ]
    )
    assert sorted(positions.tolist()) == list(range(96))  # one mask key per sample


def test_block_order_with_invalid_rows_and_a_remainder() -> None:
    """Only valid rows, each at most once; the rows left out (fewer than a global batch)
    change from epoch to epoch, so over epochs every row is seen."""
    order = _block(GAPPY)
    assert order.batches_per_epoch == len(GAPPY) // 8
    union: set[int] = set()
    for epoch in range(6):
        got = np.concatenate([b[0] for b in _epoch_stream(order, epoch)])
        assert len(got) == len(set(got.tolist())) == order.batches_per_epoch * 8
        assert set(got.tolist()) <= set(GAPPY.tolist())
        union |= set(got.tolist())
    assert union == set(GAPPY.tolist())


def test_block_order_is_seeded_and_shuffles_within_windows() -> None:
    rows = np.arange(4000)
    a, b = _block(rows, buffer=512, chunk_rows=32), _block(rows, buffer=512, chunk_rows=32)
    first = _epoch_stream(a, 0)
    again = _epoch_stream(b, 0)
    assert all(
        np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(first, again)
    )
    other_epoch = np.concatenate([x[0] for x in _epoch_stream(a, 1)])
    other_seed = np.concatenate(
        [x[0] for x in _epoch_stream(_block(rows, seed=2, buffer=512, chunk_rows=32), 0)]
    )
    stream = np.concatenate([x[0] for x in first])
    assert not np.array_equal(stream, other_epoch) and not np.array_equal(stream, other_seed)
    # a window of 512 = 16 chunks of 32: a local batch of 8 mixes rows of several chunks,
    # and the window is not served in chunk order
    win = a.window(0, 0)
    assert a.window_size == 512 and len(win.spans) in (16, 17)
    assert len({int(r) // 32 for r in win.rows[:8]}) >= 4
    assert not np.array_equal(np.sort(win.rows), win.rows)
    # crops are drawn per sample, all of them used
    assert set(np.concatenate([x[1] for x in first]).tolist()) == {0, 1, 2}


def test_block_order_windows_read_whole_chunks_and_map_to_rows() -> None:
    order = _block(GAPPY, buffer=24, chunk_rows=8)
    assert order.window_size == 24
    for w in range(order.windows_per_epoch):
        win = order.window(3, w)
        read = np.concatenate([np.arange(c * 8 + lo, c * 8 + hi) for c, lo, hi in win.spans])
        assert np.array_equal(read[win.slots], win.rows)  # a slot is where the row was read
        assert len(read) <= len(win.rows) + 8 * 2  # at most the gaps inside the chunks
        assert len({c for c, _, _ in win.spans}) == len(win.spans)  # one run per chunk
    with pytest.raises(IndexError):
        order.window(0, order.windows_per_epoch)
    with pytest.raises(ValueError, match="rank"):
        _block(GAPPY, rank=2, world=2)


def test_block_batches_equal_the_per_sample_path(make_dataset) -> None:
    """Block-order batches (rows read a window at a time) are exactly what the per-sample
    read gives for the same rows, crops and mask keys."""
    for mode in ("memmap", "memory", "zarr"):
        ds = make_dataset(store_mode=mode, order="block", shuffle_buffer=8)
        assert isinstance(ds.order, BlockOrder) and ds.order.window_size == 8
        for epoch, index in ((0, 0), (0, 3), (2, 1)):
            rows, crops, positions = ds.samples(epoch, index)
            want = ds.build(rows, crops, ds.sample_keys(epoch, positions))
            assert _same(ds[(epoch, index)], want), (mode, epoch, index)


def test_auto_order_is_random_in_ram_and_block_from_disk(make_dataset) -> None:
    assert make_dataset().order_kind == "random"  # the toy store is small: held in RAM
    assert make_dataset(store_mode="memmap").order_kind == "block"
    with pytest.raises(ValueError, match="order must be"):
        make_dataset(order="sorted")


def test_block_loader_resumes_mid_epoch_with_workers(make_dataset) -> None:
    ds = make_dataset(store_mode="memmap", order="block", shuffle_buffer=16)
    full = list(TokenLoader(ds, num_workers=0, max_batches=6))
    head = list(TokenLoader(ds, num_workers=2, max_batches=3))
    resumed = TokenLoader(ds, num_workers=2, max_batches=3)
    resumed.load_state_dict({"epoch": 0, "batch": 3})
    tail = list(resumed)
    assert all(_same(a, b) for a, b in zip(full, head + tail))
    assert resumed.state_dict() == {"epoch": 1, "batch": 2}


def test_block_rank_parts_are_disjoint_on_the_store(make_dataset) -> None:
    parts = [make_dataset(store_mode="memmap", order="block", rank=r, world=2) for r in range(2)]
    rows = [np.concatenate([p.samples(0, i)[0] for i in range(len(p))]) for p in parts]
    assert not set(rows[0].tolist()) & set(rows[1].tolist())
    assert sorted(np.concatenate(rows).tolist()) == parts[0].order.rows.tolist()


def test_packed_batch_round_trip() -> None:
    batch = {
        "a": torch.arange(12, dtype=torch.int64).reshape(3, 4),
        "empty": torch.zeros(0, dtype=torch.int64),
        "mask": torch.tensor([[True, False, True]]),
        "half": torch.linspace(-1, 1, 7, dtype=torch.float16),
        "n": torch.tensor([5, 6], dtype=torch.int64),
    }
    for shared in (False, True):
        packed = PackedBatch.pack(batch, shared=shared)
        assert packed.buf.is_shared() == shared
        out = packed.unpack()
        assert list(out) == list(batch)
        for k in batch:
            assert out[k].dtype == batch[k].dtype and torch.equal(out[k], batch[k]), k
            assert out[k].untyped_storage().data_ptr() == packed.buf.untyped_storage().data_ptr()
        offsets = [o for *_, o in packed.layout]
        assert all(o % 64 == 0 for o in offsets) and offsets == sorted(offsets)
    for edge in (
        {"a": torch.ones(3, dtype=torch.int64), "last_empty": torch.zeros(0, 5)},
        {"only_empty": torch.zeros(0, dtype=torch.bool)},
        {"scalar": torch.tensor(7)},
    ):
        out = PackedBatch.pack(edge, shared=True).unpack()
        assert all(out[k].shape == edge[k].shape and torch.equal(out[k], edge[k]) for k in edge)


class _Probe(torch.utils.data.Dataset):
    """Reports, from the process that builds each item, whether its malloc was tuned."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key):  # noqa: ANN001, ANN204
        import os

        from terraloom.model import packed

        info = torch.utils.data.get_worker_info()
        return {
            "pid": torch.tensor(os.getpid()),
            "worker": torch.tensor(-1 if info is None else info.id),
            "tuned": torch.tensor(int(packed.MALLOC_TUNED)),
        }


def test_loader_workers_keep_freed_memory() -> None:
    """Loader workers run with malloc tuned (glibc); the caller's process is left alone."""
    import ctypes
    import os

    from terraloom.model import packed

    glibc = hasattr(ctypes.CDLL(None), "mallopt")
    got = list(TokenLoader(_Probe(), num_workers=2, max_batches=4))  # type: ignore[arg-type]
    assert {int(b["worker"]) for b in got} == {0, 1}
    assert all(int(b["pid"]) != os.getpid() for b in got)
    assert all(bool(b["tuned"]) == glibc for b in got)
    assert packed.MALLOC_TUNED is False
    (inline,) = list(TokenLoader(_Probe(), num_workers=0, max_batches=1))  # type: ignore[arg-type]
    assert int(inline["worker"]) == -1 and not bool(inline["tuned"])


def test_training_config_chooses_the_order(train_config, tmp_path) -> None:
    from terraloom.model.config import DataConfig
    from terraloom.model.train import _dataset

    cfg = train_config(tmp_path)
    assert cfg.data.order == "auto" and _dataset(cfg, "train", 0, 1).order_kind == "random"
    block = replace(cfg, data=replace(cfg.data, order="block", shuffle_buffer=16))
    ds = _dataset(block, "train", 1, 2)
    assert isinstance(ds.order, BlockOrder) and ds.order.window_size == 16 and ds.order.rank == 1
    with pytest.raises(ValueError, match="data.order must be one of auto, random, block"):
        DataConfig(order="shuffled")
    with pytest.raises(ValueError, match="shuffle_buffer"):
        DataConfig(shuffle_buffer=0)
