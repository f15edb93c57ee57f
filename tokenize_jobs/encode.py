"""The pre-tokenization job: corpus split stores -> token split stores.

Three overlapping stages per split, so the device never waits on I/O:

1. **read** (background threads, ``prefetch`` whole corpus shards ahead): decode the
   shard's image arrays, pin them, draw the crops, and run the CPU-only sequence
   tokenizers (GEO bins, CAPTION WordPiece) on the shard's valid rows;
2. **encode** (main thread): one batched host-to-device copy per modality of whole
   264 px samples, crops cut on the device with one gather, every image tokenizer in
   inference mode (bf16 autocast on CUDA), codes copied back asynchronously;
3. **write** (a background thread): scatter the valid rows into full shard blocks,
   write them into the token store, checksum them, then commit the shard with an
   atomic marker.

Work is assigned by whole corpus shards (token chunk = corpus shard), so ranks of a
``torchrun`` job never touch the same file; committed shards are skipped, so a killed
job resumes and a finished job re-run does nothing. A resume checks each committed
shard before it skips it (every chunk file present with the size its marker recorded;
``verify_committed`` compares the checksums too) and re-encodes, saying so, the shards
that fail; the end of a split re-checks every shard it leaves committed. One job at a time
writes an output: rank 0 holds its lease (``storage.lease``), a second job is refused with
one line. Rows stay aligned with the corpus: invalid corpus rows keep ``valid = False``
and zero tokens/crops.

The per-shard work of the stages is ``encode_shard``, the job's config and errors
``encode_config``, what its ranks agree on and their devices ``encode_dist`` (the ranks
themselves: ``distributed``, shared with tokenizer and model training); this module runs the stages, owns the store,
its commits and the lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from terraloom.schemas.layouts import create_token_store, token_layout, validate_group
from terraloom.schemas.modalities import SAMPLE_PX, get_modality
from terraloom.storage.lease import Lease, LeaseHeld, LeaseLost
from terraloom.storage.lease import acquire as acquire_lease
from terraloom.storage.location import Location, LocationError
from terraloom.storage.zarr_handle import (
    BlockWriteStore,
    SplitHandle,
    open_handle,
    split_handle_of,
    write_rows,
)
from terraloom.tokenize_jobs.distributed import DistInfo, init_distributed
from terraloom.tokenize_jobs.encode_config import (
    EncodeBusyError,
    EncodeConfig,
    EncodeError,
    TokenizerMismatchError,
)
from terraloom.tokenize_jobs.encode_dist import agree, job_device
from terraloom.tokenize_jobs.encode_shard import (
    ShardCodes,
    ShardInput,
    assemble_shard,
    check_tokenizers,
    corpus_splits,
    encode_images,
    image_encoder,
    read_shard,
    sample_keys,
    tokenizer_fsq_groups,
    tokenizer_identities,
)
from terraloom.tokenize_jobs.store import (
    COMMITS_DIR,
    commit_problem,
    drop_commit,
    listed_sizes,
    read_commits,
    shard_checksums,
    shard_file_sizes,
    shard_files,
    write_commit,
)

__all__ = [
    "EncodeBusyError",
    "EncodeConfig",
    "EncodeError",
    "EncodeReport",
    "SplitReport",
    "TokenizerMismatchError",
    "acquire_encode_lease",
    "encode",
    "encode_split",
    "lease_path",
    "sample_keys",
]

log = logging.getLogger(__name__)

#: The output's lease (``storage.lease``): one encode job at a time writes a token store.
LEASE_NAME = "lease.json"
#: Lease time-to-live; rank 0 renews it every third of this while the job runs, so only a
#: dead job's lease expires (on the same host a dead pid frees it at once).
LEASE_TTL_S = 120.0


@dataclass
class SplitReport:
    split: str
    n_samples: int
    n_shards: int
    already_committed: int
    #: committed shards that failed their check on resume and were re-encoded: (shard, why)
    redone: list[tuple[int, str]] = field(default_factory=list)
    encoded_shards: int = 0
    encoded_rows: int = 0
    valid_rows: int = 0
    seconds: float = 0.0

    @property
    def samples_per_s(self) -> float:
        return self.encoded_rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class EncodeReport:
    splits: list[SplitReport] = field(default_factory=list)

    @property
    def encoded_shards(self) -> int:
        return sum(s.encoded_shards for s in self.splits)


# --------------------------------------------------------------------------- tokenizers


def _load_tokenizers(
    directory: str | os.PathLike[str] | Location, names: Sequence[str]
) -> dict[str, Any]:
    """The tokenizers to encode with, on the CPU; a missing or unloadable one is bad input."""
    from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers

    try:
        return dict(load_tokenizers(directory, names))
    except (FileNotFoundError, ValueError) as exc:
        hint = " (or pass --modalities)" if isinstance(exc, FileNotFoundError) else ""
        raise EncodeError(f"{exc}{hint}") from exc


# --------------------------------------------------------------------------- store


def _relpath(target: Location, start: Location) -> str:
    """Where the corpus is, as recorded in the token store: relative when both are local,
    else the corpus URL (never its storage options)."""
    if not (target.is_local and start.is_local):
        return str(target)
    try:
        return os.path.relpath(target.local_path.resolve(), start.local_path.resolve())
    except ValueError:  # other drive on Windows
        return str(target)


def _describe(ident: Mapping[str, Any] | None) -> str:
    if not ident:
        return "none"
    return (
        f"{ident.get('id')} version {ident.get('version')} (sha256 {str(ident.get('sha256'))[:12]})"
    )


#: Every chunk is written, fill values included: a commit vouches for one file per array.
WRITE_CONFIG = {"write_empty_chunks": True}


def open_store(
    out_split: Location,
    corpus_split: Location,
    n_samples: int,
    shard_samples: int,
    modality_names: Sequence[str],
    identities: Mapping[str, Mapping[str, str]],
    cfg: EncodeConfig,
    split: str,
    fsq_groups: Mapping[str, Sequence[int]] | None = None,
) -> SplitHandle:
    """Create (template-first) or reopen the split's token store and refuse mismatches.

    A new store records its tokenizers' identities and FSQ groupings (``fsq_groups``, read
    by training's ordinal targets: ``TokenStore.fsq_groups``).

    The store's metadata is read once here (``storage.zarr_handle``: Zarr v3, no probes for
    v2 metadata) and the handle returned serves the whole run: the layout check, the
    tokenizer check, every shard write and every commit check, with no further metadata
    request (on S3 each reopening of the group and its arrays cost ~2 requests per array).
    """
    import zarr

    try:
        if (out_split / "zarr.json").exists():
            handle = open_handle(out_split.zarr_store())
            layout = token_layout(
                n_samples, cfg.n_crops, cfg.crop_px, shard_samples, tuple(modality_names), split
            )
            findings = validate_group(handle, layout)
            if findings:
                raise ValueError(
                    f"existing store {out_split} does not match the requested layout: "
                    + "; ".join(findings)
                )
            group = None
        else:
            group = create_token_store(
                out_split,
                n_samples=n_samples,
                n_crops=cfg.n_crops,
                crop_px=cfg.crop_px,
                shard_samples=shard_samples,
                split=split,
                modality_names=tuple(modality_names),
            )
            handle = None
    except ValueError as exc:
        raise EncodeError(
            f"{exc}. Encode into a new --out directory, or use the store's --crops/--crop-size/--modalities."
        ) from exc
    attrs = dict(handle.attrs if handle is not None else group.attrs)  # type: ignore[union-attr]
    stored = attrs.get("tokenizers") or {}
    if stored:
        diffs = [
            f"{m}: store has {_describe(stored.get(m))}, given {_describe(identities.get(m))}"
            for m in modality_names
            if dict(stored.get(m) or {}) != dict(identities.get(m) or {})
        ]
        if diffs:
            raise TokenizerMismatchError(
                f"refusing to encode into {out_split}: it was written with other tokenizers ({'; '.join(diffs)}). Encode into a new --out directory, or delete the store to re-encode it."
            )
        if attrs.get("crop_seed") != cfg.seed:
            raise EncodeError(
                f"refusing to encode into {out_split}: its crops were drawn with seed {attrs.get('crop_seed')}, not {cfg.seed}"
            )
        assert handle is not None  # a store just created has no tokenizers yet
        return handle.with_config(WRITE_CONFIG)
    if group is None:  # created by a run killed before it recorded its tokenizers
        group = zarr.open_group(out_split.zarr_store(), mode="r+", zarr_format=3)
    group.update_attributes(  # one write of the root metadata, not one per key
        {
            "tokenizers": {m: dict(identities[m]) for m in modality_names},
            "fsq_groups": {
                m: [int(g) for g in fsq_groups[m]]
                for m in modality_names
                if fsq_groups and m in fsq_groups
            },
            "crop_seed": cfg.seed,
            "sample_px": SAMPLE_PX,
            "corpus": _relpath(corpus_split, out_split.parent),
            "flip": "bit 0 (1) mirrors x (left-right), bit 1 (2) mirrors y (top-bottom), applied after cutting",
        }
    )
    if handle is not None:
        return replace(handle, attrs=dict(group.attrs)).with_config(WRITE_CONFIG)
    return split_handle_of(group).with_config(WRITE_CONFIG)


def write_shard(
    store_path: Location,
    arrays: SplitHandle | Mapping[str, Any],
    shard: int,
    lo: int,
    hi: int,
    blocks: Mapping[str, np.ndarray],
    identities: Mapping[str, Mapping[str, str]],
    seed: int,
) -> Location:
    """Write a shard's blocks, checksum them, then commit the shard (a write-once marker
    created after the chunk objects it vouches for).

    ``arrays`` is the store's handle (:func:`open_store`) or its zarr arrays by name. The
    blocks are written all at once through a :class:`BlockWriteStore` that records the size
    of every chunk object it writes: the marker's sizes come from the write itself, not from
    a HEAD per file, and the shard's chunks are never read first (each is replaced whole)."""
    handle = arrays if isinstance(arrays, SplitHandle) else _handle_of_arrays(arrays)
    files = shard_files(store_path, {n: handle.metadata[n] for n in blocks})
    keys = {name: files[name].chunk_key(shard) for name in blocks}
    store = BlockWriteStore(handle.store, frozenset(keys.values()))
    write_rows(handle, store, lo, hi, blocks)
    written = {name: store.written.get(key) for name, key in keys.items()}
    missing = {name: files[name] for name, size in written.items() if size is None}
    sizes = {name: int(size) for name, size in written.items() if size is not None}
    if missing:  # not written as one object per shard (another layout): ask the store
        sizes.update(shard_file_sizes(store_path, shard, missing))
    record = {
        "rows": [lo, hi],
        "n_valid": int(np.asarray(blocks["valid"]).sum()),
        "checksums": shard_checksums(blocks),
        "sizes": dict(sorted(sizes.items())),
        "tokenizers": {m: str(i.get("sha256")) for m, i in sorted(identities.items())},
        "crop_seed": seed,
    }
    return write_commit(store_path, shard, record)


def _handle_of_arrays(arrays: Mapping[str, Any]) -> SplitHandle:
    """A handle over zarr arrays that share one store root (no request: their metadata is
    in memory), writing every chunk as :func:`open_store`'s handle does."""
    stores = {id(a.store_path.store): a.store_path.store for a in arrays.values()}
    if len(stores) != 1 or any(a.store_path.path != n for n, a in arrays.items()):
        raise ValueError("write_shard takes the arrays of one split store, by their names")
    (store,) = stores.values()
    return SplitHandle(store, {}, {n: a.metadata for n, a in arrays.items()}, WRITE_CONFIG)


# --------------------------------------------------------------------------- driver


def _prefetched(
    fn: Callable[[int], ShardInput], shards: Sequence[int], depth: int, threads: int
) -> Iterator[ShardInput]:
    """Yield ``fn(shard)`` in order while up to ``depth`` later shards load in threads."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tokens-read") as pool:
        pending: deque[Future[ShardInput]] = deque()
        it = iter(shards)
        for s in it:
            pending.append(pool.submit(fn, s))
            if len(pending) > depth:
                break
        while pending:
            fut = pending.popleft()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(fn, nxt))
            try:
                yield fut.result()
            except BaseException:
                for f in pending:
                    f.cancel()
                raise


class _Writer:
    """One background thread that assembles, writes and commits shards in order."""

    def __init__(self, work: Callable[[ShardCodes], None], depth: int = 2) -> None:
        self._q: queue.Queue[ShardCodes | None] = queue.Queue(maxsize=depth)
        self._work = work
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tokens-write", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self._work(item)
                except BaseException as exc:  # surfaced in the main thread
                    self._error = exc

    def put(self, item: ShardCodes) -> None:
        self._raise()
        self._q.put(item)

    def close(self) -> None:
        self._q.put(None)
        self._thread.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


def encode_split(
    corpus_split: Location | str | os.PathLike[str],
    out_split: Location | str | os.PathLike[str],
    tokenizers: Mapping[str, Any],
    cfg: EncodeConfig,
    keys: np.ndarray | None = None,
    dist_: DistInfo | None = None,
) -> SplitReport:
    """Encode one corpus split store into one token split store (this rank's shards).

    Each store is opened once per run (the corpus group and the arrays it reads, the token
    store through :func:`open_store`'s handle), the commits are read once and checked against
    one listing of the store's sizes: on an object store a finished split re-run costs a
    handful of requests, not a few per array and shard."""
    import zarr

    d = dist_ or DistInfo()
    corpus_split, out_split = Location.parse(corpus_split), Location.parse(out_split)
    split = out_split.name[: -len(".zarr")] if out_split.name.endswith(".zarr") else out_split.name
    corpus_store = corpus_split.zarr_store(read_only=True)
    try:
        corpus = zarr.open_group(corpus_store, mode="r", zarr_format=3)
        c_attrs: dict[str, Any] = dict(corpus.attrs)
        n_samples, shard_samples = int(c_attrs["n_samples"]), int(c_attrs["shard_samples"])
    except (FileNotFoundError, KeyError, ValueError) as exc:
        raise EncodeError(f"{corpus_split} is not a corpus split store: {exc!r}") from exc
    names = cfg.modality_names
    present = set(corpus_split.listdir())  # one listing, not a metadata read per array
    missing = [m for m in (*names, "valid") if m not in present]
    if missing:
        raise EncodeError(f"corpus {corpus_split} lacks arrays {missing}")
    check_tokenizers(tokenizers, names, cfg.crop_px)
    identities = tokenizer_identities({m: tokenizers[m] for m in names})
    groups = tokenizer_fsq_groups({m: tokenizers[m] for m in names})
    device = job_device(cfg, d)

    error: EncodeError | None = None
    handle: SplitHandle | None = None
    if d.rank == 0:
        try:
            handle = open_store(
                out_split,
                corpus_split,
                n_samples,
                shard_samples,
                names,
                identities,
                cfg,
                split,
                groups,
            )
        except EncodeError as exc:
            error = exc
    error = agree(d, error)
    if error is not None:
        raise error
    if d.rank != 0:  # every rank checks for itself too (the attrs are on disk now)
        handle = open_store(
            out_split, corpus_split, n_samples, shard_samples, names, identities, cfg, split, groups
        )
    assert handle is not None
    files = shard_files(out_split, handle.metadata)

    n_shards = -(-n_samples // shard_samples) if n_samples else 0
    # each rank checks its share of the committed shards and withdraws the commits that fail
    commits = read_commits(out_split)
    redone = recheck_commits(
        out_split,
        n_samples,
        shard_samples,
        full=cfg.verify_committed,
        rank=d.rank,
        world=d.world,
        commits=commits,
        files=files,
    )
    for shard, why in redone:
        log.warning(
            "%s: committed shard %d failed its check (%s); re-encoding it", split, shard, why
        )
    for shard, _ in redone:
        commits.pop(shard, None)
    d.barrier()  # every failed commit is withdrawn before anyone lists them
    if d.world > 1:  # other ranks withdrew theirs: list again
        commits = read_commits(out_split, known=commits)
    committed = set(commits)
    d.barrier()  # everyone has listed the commits before anyone writes new ones
    todo = [k for k in range(n_shards) if k not in committed][d.rank :: d.world]
    if cfg.max_shards is not None:
        todo = todo[: cfg.max_shards]
    report = SplitReport(split, n_samples, n_shards, len(committed & set(range(n_shards))), redone)
    if not todo:
        d.barrier()
        if d.world > 1 or redone:
            _check_finished(out_split, n_samples, shard_samples, d, files)
        # else: every shard was checked a moment ago (recheck_commits) and none was written
        return report

    if keys is None:
        keys = sample_keys(corpus_split.parent, split, n_samples)
    image_names = [m for m in names if get_modality(m).is_image]
    with torch.inference_mode():
        encoders = {}
        for m in image_names:
            tok = tokenizers[m].to(device)
            if isinstance(getattr(tok, "model", None), torch.nn.Module):
                tok.model.eval()
            encoders[m] = image_encoder(tok, cfg)
        corpus_arrays = {
            name: zarr.open_array(corpus_store, path=name, mode="r", zarr_format=3)
            for name in (*names, "valid")
        }

        def write(res: ShardCodes) -> None:
            blocks = assemble_shard(res, tokenizers, names, cfg.n_crops, cfg.crop_px)
            write_shard(
                out_split,
                handle,
                res.inp.shard,
                res.inp.lo,
                res.inp.hi,
                blocks,
                identities,
                cfg.seed,
            )
            report.encoded_shards += 1
            report.encoded_rows += res.inp.hi - res.inp.lo
            report.valid_rows += res.inp.n_valid
            bar.update(1)

        def read(shard: int) -> ShardInput:
            return read_shard(
                corpus_arrays,
                shard,
                shard_samples,
                n_samples,
                keys,
                tokenizers,
                names,
                cfg,
                pin=device.type == "cuda",
                precut=not cfg.crop_on_device
                if cfg.crop_on_device is not None
                else device.type == "cpu",
            )

        from tqdm import tqdm

        bar = tqdm(
            total=len(todo),
            desc=f"encode {split}",
            unit="shard",
            disable=not cfg.progress or d.rank != 0,
        )
        t0 = time.perf_counter()
        writer = _Writer(write)
        try:
            for inp in _prefetched(read, todo, cfg.prefetch, cfg.read_threads):
                writer.put(encode_images(inp, {m: encoders[m] for m in image_names}, cfg, device))
        finally:
            writer.close()
            bar.close()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        report.seconds = time.perf_counter() - t0
    d.barrier()
    # the markers read at the start are write-once: only the new ones are read again (one
    # process: every shard withdrawn since was withdrawn by this process, so left out above)
    _check_finished(
        out_split, n_samples, shard_samples, d, files, known=commits if d.world == 1 else None
    )
    return report


def recheck_commits(
    out_split: Location | str | os.PathLike[str],
    n_samples: int,
    shard_samples: int,
    *,
    full: bool = False,
    rank: int = 0,
    world: int = 1,
    commits: Mapping[int, Mapping[str, Any]] | None = None,
    files: Mapping[str, Any] | None = None,
) -> list[tuple[int, str]]:
    """Check this rank's share of the committed shards; withdraw the commits that fail.

    A marker says a shard was complete when it was written, not that it still is: a chunk
    file deleted or truncated since (or, with ``full``, a flipped byte) would otherwise be
    skipped on every resume and trained on. Returns (shard, why) of each withdrawn commit.
    ``commits`` (:func:`read_commits`) and ``files`` (``store.shard_files``) are read here
    when not given; the sizes come from one listing of the store on an object store.
    """
    n_shards = -(-n_samples // shard_samples) if n_samples else 0
    commits = read_commits(out_split) if commits is None else commits
    mine = {
        shard: record
        for shard, record in sorted(commits.items())
        if 0 <= shard < n_shards and shard % world == rank
    }
    if not mine:
        return []
    files = shard_files(out_split) if files is None else files
    listed = listed_sizes(out_split)
    failed: list[tuple[int, str]] = []
    for shard, record in mine.items():
        rows = (shard * shard_samples, min((shard + 1) * shard_samples, n_samples))
        why = commit_problem(out_split, shard, record, rows, full=full, files=files, listed=listed)
        if why is not None:
            drop_commit(out_split, shard)
            failed.append((shard, why))
    return failed


def _check_finished(
    out_split: Location,
    n_samples: int,
    shard_samples: int,
    d: DistInfo,
    files: Mapping[str, Any],
    known: Mapping[int, Mapping[str, Any]] | None = None,
) -> None:
    """A split whose shards are all committed is re-checked (cheaply) before it is reported
    done: a shard changed by someone else while this job ran is an error, not a success.
    One listing of the markers (reading only those not in ``known``) and one of the sizes."""
    if d.rank != 0:
        return
    n_shards = -(-n_samples // shard_samples) if n_samples else 0
    commits = read_commits(out_split, known=known)
    if any(k not in commits for k in range(n_shards)):
        return  # not finished (max_shards): the next run checks and completes it
    listed = listed_sizes(out_split)
    bad = []
    for k in range(n_shards):
        rows = (k * shard_samples, min((k + 1) * shard_samples, n_samples))
        why = commit_problem(out_split, k, commits[k], rows, files=files, listed=listed)
        if why is not None:
            bad.append(f"shard {k}: {why}")
    if bad:
        raise EncodeError(
            f"{out_split} changed while it was being encoded ({'; '.join(bad[:3])}); is another encode writing to it? Re-run to repair it."
        )


def encode(
    corpus_dir: str | os.PathLike[str] | Location,
    tokenizers: str | os.PathLike[str] | Location | Mapping[str, Any],
    out_dir: str | os.PathLike[str] | Location,
    cfg: EncodeConfig | None = None,
) -> EncodeReport:
    """Encode every split of ``corpus_dir`` into ``out_dir/<split>.zarr`` (resumable).

    Each of the three is a local path or a location (``s3://...``, ``memory://...``): the
    corpus is read and the token store written through zarr's store for it, commits are
    write-once markers and the lease works on every backend. ``tokenizers`` is a directory
    of tokenizer folders (``s2l2a/``, ``geo/`` ...) or a mapping modality -> tokenizer
    object. Under ``torchrun`` each rank encodes its own shards; a store written by other
    tokenizers raises :class:`TokenizerMismatchError`.
    """
    cfg = cfg or EncodeConfig()
    try:
        corpus_root, out_root = Location.parse(corpus_dir), Location.parse(out_dir)
        if out_root.read_only:
            raise LocationError(f"{out_root} is read-only ({out_root.scheme}://)")
    except LocationError as exc:
        raise EncodeError(str(exc)) from exc
    if not corpus_root.is_dir():
        raise EncodeError(f"corpus directory {corpus_root} does not exist")
    splits = list(cfg.splits) if cfg.splits is not None else corpus_splits(corpus_root)
    if not splits:
        raise EncodeError(f"no <split>.zarr corpus stores in {corpus_root}")
    for s in splits if cfg.splits is not None else ():  # corpus_splits checked its own
        if not (corpus_root / f"{s}.zarr/zarr.json").exists():
            raise EncodeError(f"corpus split {corpus_root / (s + '.zarr')} does not exist")
    d = init_distributed(nccl=cfg.device.startswith("cuda"))
    lease: Lease | None = None
    try:
        toks = (
            dict(tokenizers)
            if isinstance(tokenizers, Mapping)
            else _load_tokenizers(tokenizers, cfg.modality_names)
        )
        out_root.makedirs()
        busy: EncodeError | None = None
        if d.rank == 0:  # the job's ranks share rank 0's lease
            try:
                lease = acquire_encode_lease(out_root)
            except EncodeError as exc:
                busy = exc
        busy = agree(d, busy)
        if busy is not None:
            raise busy
        report = EncodeReport()
        with lease.keep_alive() if lease is not None else contextlib.nullcontext():
            for s in splits:
                report.splits.append(
                    encode_split(
                        corpus_root / f"{s}.zarr", out_root / f"{s}.zarr", toks, cfg, dist_=d
                    )
                )
        if lease is not None:
            try:
                lease.renew()  # still ours: no other job wrote meanwhile
            except LeaseLost as exc:
                raise EncodeBusyError(str(exc)) from exc
        return report
    finally:
        if lease is not None:
            lease.release()
        d.close()


def lease_path(out_dir: str | os.PathLike[str] | Location) -> Location:
    """``tokens/_commits/lease.json``: beside the commit markers it guards."""
    return Location.parse(out_dir) / f"{COMMITS_DIR}/{LEASE_NAME}"


def acquire_encode_lease(
    out_dir: str | os.PathLike[str] | Location, ttl: float = LEASE_TTL_S
) -> Lease:
    """The exclusive lease of one encode job on ``out_dir``; :class:`EncodeBusyError` (one
    line: who holds it, until when) while another live job holds it. A stale lease (expired,
    or of a dead process on this host) is taken over."""
    try:
        return acquire_lease(lease_path(out_dir), {"job": "terraloom-tokenize encode"}, ttl=ttl)
    except LeaseHeld as exc:
        raise EncodeBusyError(f"another encode is writing this token store: {exc}") from exc
