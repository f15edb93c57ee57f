"""The encode job writing to a real S3 endpoint (moto's server on 127.0.0.1): the token
store, its commits and its lease on the object store, resumed after SIGKILL, one job at a
time, and a finished run re-run writing nothing.

What these tests check is the object store's side (chunk writes, commit markers, the lease,
resume), which is the same code for every array; the breadth of modalities is checked on
local disk (test_encode.py). So they encode one modality of each kind (an image tokenizer,
GEO's bins, CAPTION with its length array) from a corpus holding only those arrays: each
array costs ~20 requests to open and several per shard, and moto serves one at a time."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import zarr
from encode_support import (
    BATCH,
    CROP_SIZE,
    CROPS,
    ENCODE_ARGS,
    SLOW_ENCODE_ARGS,
    assert_same_store,
    encode_argv,
    kill_when_committed,
    run_cli,
    shared,
)

from terraloom.storage.location import Location
from terraloom.storage.transfer import upload_tree
from terraloom.tokenize_jobs.encode import EncodeConfig, acquire_encode_lease, encode
from terraloom.tokenize_jobs.verify import verify_tokens
from tests.storage.s3server import S3Server

#: One modality of each kind the store writes: image codes, GEO bins, CAPTION (+ lengths).
MODALITIES = ("DEM", "GEO", "CAPTION")
MODALITY_ARGS = ("--modalities", ",".join(MODALITIES))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared(tmp_path_factory)


def _reference(env, batch: int) -> Path:  # type: ignore[no-untyped-def]
    """The uninterrupted local run of ``MODALITIES`` with ``batch`` crops a batch, encoded
    once per session next to the shared store (the kill tests' schedule is batch 1)."""
    out = env["tokens"].parent / f"reference_s3_batch{batch}"
    if not (out / "train.zarr").exists():
        cfg = EncodeConfig(
            n_crops=CROPS, crop_px=CROP_SIZE, batch=batch, modalities=MODALITIES, progress=False
        )
        encode(env["corpus"], env["tokenizers"], out, cfg)
    return out


def _files(root: Path, keep: Callable[[list[str]], bool]) -> list[str]:
    names = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return sorted(n for n in names if keep(n.split("/")))


def _upload_inputs(env, bucket: str) -> tuple[Location, Location]:  # type: ignore[no-untyped-def]
    """The corpus files the encode of ``MODALITIES`` reads (metadata, index, their arrays
    and ``valid``) and their tokenizers."""
    corpus, toks = Location.parse(f"{bucket}/corpus"), Location.parse(f"{bucket}/tokenizers")
    arrays = (*MODALITIES, "valid")
    upload_tree(
        env["corpus"], corpus, _files(env["corpus"], lambda p: len(p) <= 2 or p[1] in arrays)
    )
    lower = tuple(m.lower() for m in MODALITIES)
    upload_tree(env["tokenizers"], toks, _files(env["tokenizers"], lambda p: p[0] in lower))
    return corpus, toks


def test_encode_to_s3_equals_local_and_a_rerun_writes_nothing(env, s3_bucket):
    corpus, toks = _upload_inputs(env, s3_bucket)
    out = Location.parse(f"{s3_bucket}/tokens")
    cfg = EncodeConfig(
        n_crops=CROPS, crop_px=CROP_SIZE, batch=BATCH, modalities=MODALITIES, progress=False
    )
    report = encode(corpus, toks, out, cfg)
    assert report.encoded_shards == 3
    assert_same_store(out, _reference(env, BATCH))
    assert zarr.open_group((out / "train.zarr").zarr_store(read_only=True), mode="r").attrs[
        "corpus"
    ] == str(corpus / "train.zarr")
    assert verify_tokens(out).ok
    assert not (out / "_commits/lease.json").exists()  # released

    before = {f: (out / f).mtime() for f in out.walk_files()}
    again = encode(corpus, toks, out, cfg)
    assert again.encoded_shards == 0
    assert {f: (out / f).mtime() for f in out.walk_files()} == before  # nothing rewritten


def _count_commits(loc: Location) -> int:
    return len((loc / "_commits/train").listdir())


def test_kill_twice_on_s3_and_resume_equals_uninterrupted(env, s3_bucket):
    corpus, toks = _upload_inputs(env, s3_bucket)
    out = Location.parse(f"{s3_bucket}/tokens")
    args = encode_argv(corpus, toks, out, *SLOW_ENCODE_ARGS, *MODALITY_ARGS)
    first = kill_when_committed(args, lambda: _count_commits(out), 1)
    assert 1 <= first < 3, f"first kill landed after {first} commits; the test needs a partial run"
    assert (out / "_commits/lease.json").exists()  # the killed job's lease is left behind
    second = kill_when_committed(args, lambda: _count_commits(out), first + 1)
    assert first < second < 3, f"second kill landed after {second} commits"
    # resumed in this process (the CLI's resume and its message are tested on local disk):
    # the killed job's lease is taken over, the committed shards kept, the rest encoded
    cfg = EncodeConfig(
        n_crops=CROPS,
        crop_px=CROP_SIZE,
        batch=1,
        prefetch=1,
        read_threads=1,
        modalities=MODALITIES,
        progress=False,
    )
    (resumed,) = encode(corpus, toks, out, cfg).splits
    assert (resumed.already_committed, resumed.encoded_shards) == (second, 3 - second)
    assert_same_store(out, _reference(env, 1))
    assert verify_tokens(out).ok


def test_a_second_encode_into_one_s3_output_is_refused(env, s3_bucket):
    corpus, toks = env["corpus"], env["tokenizers"]  # local: only the output's lease counts
    out = Location.parse(f"{s3_bucket}/tokens")
    lease = acquire_encode_lease(out)  # a live job (this process) holds the output
    try:
        refused = run_cli(*encode_argv(corpus, toks, out, *ENCODE_ARGS))
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1 and "another encode is writing this token store" in lines[0]
        assert f"pid {os.getpid()}" in lines[0]
        assert not (out / "train.zarr/zarr.json").exists()  # refused before the store
    finally:
        lease.release()
    assert not (out / "_commits/lease.json").exists()


def _requests_of(server: S3Server, run: Callable[[], object]) -> list[tuple[str, str]]:
    n0 = len(server.log)
    run()
    return server.log[n0:]


def test_encode_on_s3_opens_each_store_once_and_a_finished_rerun_makes_a_handful_of_requests(
    env, s3_bucket, s3_server
):
    """Issue 19: a first encode of 3 shards made 461 requests and a finished re-run 375
    (writing nothing): every array's ``zarr.json`` HEAD'd 14 times and fetched 8 times per
    run, probes for Zarr v2 metadata, a HEAD per chunk file for each marker's sizes and
    again for each check. Now each store's metadata is read once per run (Zarr v3, no
    probes), the sizes come from the write itself and the checks from one listing."""
    corpus, toks = _upload_inputs(env, s3_bucket)
    out = Location.parse(f"{s3_bucket}/tokens")
    cfg = EncodeConfig(
        n_crops=CROPS, crop_px=CROP_SIZE, batch=BATCH, modalities=MODALITIES, progress=False
    )
    first = _requests_of(s3_server, lambda: encode(corpus, toks, out, cfg))
    again = _requests_of(s3_server, lambda: encode(corpus, toks, out, cfg))
    assert_same_store(out, _reference(env, BATCH))  # the same bytes, markers included

    arrays = [n for n in (out / "train.zarr").listdir() if n != "zarr.json"]  # 6
    v2 = (".zattrs", ".zgroup", ".zarray", ".zmetadata", "zarr.json/zarr.json")
    for log in (first, again):
        assert not [p for _, p in log if p.split("?")[0].endswith(v2)], log
        for name in arrays:  # each array's metadata read at most once per run, per store
            meta = [m for m, p in log if p.endswith(f"/tokens/train.zarr/{name}/zarr.json")]
            assert meta.count("GET") <= 1 and meta.count("HEAD") <= 1, (name, meta)
    # no HEAD of a chunk file: the marker's sizes are what was written
    heads = [p for m, p in first if m == "HEAD" and "/tokens/train.zarr/" in p]
    assert not [p for p in heads if not p.endswith("zarr.json")], heads
    puts = [p for m, p in first if m == "PUT" and "/tokens/train.zarr/" in p]
    assert len(puts) == 3 * len(arrays) + 1 + len(arrays) + 1  # chunks, attrs, template
    # 143 today (s3fs HEADs an object before each whole GET): the inputs and tokenizers
    # ~35, the lease ~9, the template and metadata ~30, the data and markers ~70
    assert len(first) <= 155, "\n".join(f"{m} {p}" for m, p in first)
    # a finished re-run writes nothing but the lease; 47 today: the inputs and tokenizers 16,
    # the lease 9, the token store's metadata 16, the markers 7 (a listing, 2 per shard), one
    # listing of the sizes
    assert not [p for m, p in again if m in ("PUT", "POST", "DELETE") and "lease" not in p]
    assert len(again) <= 52, "\n".join(f"{m} {p}" for m, p in again)
