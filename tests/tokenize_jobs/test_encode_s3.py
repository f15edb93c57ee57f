"""The encode job writing to a real S3 endpoint (moto's server on 127.0.0.1): the token
store, its commits and its lease on the object store, resumed after SIGKILL, one job at a
time, and a finished run re-run writing nothing."""

from __future__ import annotations

import os

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
    slow_reference,
)

from terraloom.storage.location import Location
from terraloom.storage.transfer import upload_tree
from terraloom.tokenize_jobs.encode import EncodeConfig, acquire_encode_lease, encode
from terraloom.tokenize_jobs.verify import verify_tokens


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared(tmp_path_factory)


def _upload_inputs(env, bucket: str) -> tuple[Location, Location]:  # type: ignore[no-untyped-def]
    corpus, toks = Location.parse(f"{bucket}/corpus"), Location.parse(f"{bucket}/tokenizers")
    upload_tree(env["corpus"], corpus)
    upload_tree(env["tokenizers"], toks)
    return corpus, toks


def test_encode_to_s3_equals_local_and_a_rerun_writes_nothing(env, s3_bucket):
    corpus, toks = _upload_inputs(env, s3_bucket)
    out = Location.parse(f"{s3_bucket}/tokens")
    cfg = EncodeConfig(n_crops=CROPS, crop_px=CROP_SIZE, batch=BATCH, progress=False)
    report = encode(corpus, toks, out, cfg)
    assert report.encoded_shards == 3
    assert_same_store(out, env["tokens"])
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
    args = encode_argv(corpus, toks, out, *SLOW_ENCODE_ARGS)
    first = kill_when_committed(args, lambda: _count_commits(out), 1)
    assert 1 <= first < 3, f"first kill landed after {first} commits; the test needs a partial run"
    assert (out / "_commits/lease.json").exists()  # the killed job's lease is left behind
    second = kill_when_committed(args, lambda: _count_commits(out), first + 1)
    assert first < second < 3, f"second kill landed after {second} commits"
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{second} already committed" in resumed.stdout
    assert_same_store(out, slow_reference(env))
    assert verify_tokens(out).ok


def test_a_second_encode_into_one_s3_output_is_refused(env, s3_bucket):
    corpus, toks = _upload_inputs(env, s3_bucket)
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
