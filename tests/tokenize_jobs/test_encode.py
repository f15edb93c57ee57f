"""The encode job (tokenize_jobs/encode.py) on a toy corpus with tiny real tokenizers."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import zarr
from encode_support import (
    BATCH,
    CROP_SIZE,
    CROPS,
    ENCODE_ARGS,
    INVALID_ROWS,
    N_SAMPLES,
    REPO,
    SLOW_ENCODE_ARGS,
    assert_same_store,
    encode_argv,
    kill_when_committed,
    make_tokenizers,
    run_cli,
    shared,
    slow_reference,
    store_arrays,
)

from terraloom.schemas.layouts import TOKEN_MODALITIES, validate_tokens
from terraloom.schemas.modalities import get_modality
from terraloom.tokenize_jobs.cli import main
from terraloom.tokenize_jobs.crops import apply_crop, draw_crops
from terraloom.tokenize_jobs.encode import (
    EncodeConfig,
    EncodeError,
    TokenizerMismatchError,
    encode,
)
from terraloom.tokenize_jobs.store import TokenStore, read_commits
from terraloom.tokenize_jobs.tokenizers.io import load_tokenizers
from terraloom.tokenize_jobs.verify import verify_tokens

IMAGE = [m for m in TOKEN_MODALITIES if get_modality(m).is_image]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return shared(tmp_path_factory)


def test_tokens_equal_direct_tokenizer_encode(env):
    store = env["tokens"] / "train.zarr"
    assert validate_tokens(store) == []
    tokens = store_arrays(store)
    corpus = zarr.open_group(str(env["corpus"] / "train.zarr"), mode="r")
    toks = load_tokenizers(env["tokenizers"], TOKEN_MODALITIES)
    valid = np.asarray(corpus["valid"][:])
    np.testing.assert_array_equal(tokens["valid"], valid)
    assert not valid[list(INVALID_ROWS)].any()
    rows = np.flatnonzero(valid)
    # crops are seeded by the sample ids of index.parquet
    ids = dict(
        zip(
            pq.read_table(env["corpus"] / "index.parquet").column("row").to_pylist(),
            pq.read_table(env["corpus"] / "index.parquet").column("sample_id").to_pylist(),
        )
    )
    np.testing.assert_array_equal(
        tokens["crops"][rows], draw_crops([ids[r] for r in rows], CROPS, CROP_SIZE)
    )
    for m in IMAGE:
        pixels = np.asarray(corpus[m][:])
        crops = np.stack(
            [
                np.ascontiguousarray(apply_crop(pixels[r], tokens["crops"][r, c]))
                for r in rows
                for c in range(CROPS)
            ]
        )
        direct = toks[m].encode(torch.from_numpy(crops))
        got = torch.from_numpy(tokens[m][rows].astype(np.int64)).reshape(
            len(rows) * CROPS, CROP_SIZE // 16, CROP_SIZE // 16
        )
        assert torch.equal(got, direct), m
        assert len(np.unique(tokens[m][rows])) > 10, (
            f"{m} codes nearly constant: the comparison would be vacuous"
        )
    geo_ids, _ = toks["GEO"].encode_batch(np.asarray(corpus["GEO"][:])[rows], 2)
    cap_ids, cap_len = toks["CAPTION"].encode_batch(
        [bytes(b).rstrip(b"\0").decode() for b in np.asarray(corpus["CAPTION"][:])[rows]], 64
    )
    for c in range(CROPS):  # sequences are the same for every crop of a sample
        np.testing.assert_array_equal(tokens["GEO"][rows, c], geo_ids.numpy())
        np.testing.assert_array_equal(tokens["CAPTION"][rows, c], cap_ids.numpy())
        np.testing.assert_array_equal(tokens["CAPTION_len"][rows, c], cap_len.numpy())
    inv = list(INVALID_ROWS)
    for name, arr in tokens.items():
        assert not arr[inv].any(), f"{name} holds data in invalid rows"
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    assert set(attrs["tokenizers"]) == set(TOKEN_MODALITIES)
    assert attrs["tokenizers"]["DEM"] == toks["DEM"].identity
    # every image tokenizer's FSQ grouping travels with the store (training's ordinal
    # targets read it there, also from a URL); sequence tokenizers have none
    groups = TokenStore(store).fsq_groups
    assert groups == {m: tuple(toks[m].config.fsq_groups) for m in IMAGE}
    assert any(groups[m] for m in IMAGE), "every grouping empty: the check would be vacuous"
    assert sorted(read_commits(store)) == [0, 1, 2]


def test_rerun_is_a_noop(env, tmp_path):
    out = tmp_path / "tokens"
    shutil.copytree(env["tokens"], out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    report = encode(
        env["corpus"],
        env["tokenizers"],
        out,
        EncodeConfig(n_crops=CROPS, crop_px=CROP_SIZE, batch=BATCH, progress=False),
    )
    assert report.encoded_shards == 0 and report.splits[0].already_committed == 3
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before


def test_cropping_on_the_device_gives_the_same_store(env, tmp_path):
    """The accelerator path (whole samples copied, uint16 as int16 bits, crops cut on the
    device) run on the CPU must write exactly what the CPU path (crops cut by the reader) did."""
    cfg = EncodeConfig(
        n_crops=CROPS, crop_px=CROP_SIZE, batch=BATCH, crop_on_device=True, progress=False
    )
    encode(env["corpus"], env["tokenizers"], tmp_path / "tokens", cfg)
    assert_same_store(tmp_path / "tokens", env["tokens"])


def test_kill_and_resume_equals_uninterrupted(env, tmp_path):
    """SIGKILL the job once its first shard is committed, re-run, compare with an uninterrupted run."""
    out = tmp_path / "tokens"
    args = encode_argv(env["corpus"], env["tokenizers"], out, *SLOW_ENCODE_ARGS)
    commits = out / "_commits" / "train"
    kill_when_committed(args, lambda: len(list(commits.glob("shard-*.json"))), 1, poll_s=0.002)
    n_done = len(read_commits(out / "train.zarr"))
    assert 1 <= n_done < 3, f"kill landed after {n_done} commits; the test needs a partial run"
    resumed = run_cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{n_done} already committed" in resumed.stdout
    assert_same_store(out, slow_reference(env))


def test_torchrun_two_ranks_equal_single_process(env, tmp_path):
    out = tmp_path / "tokens"
    res = run_cli(*encode_argv(env["corpus"], env["tokenizers"], out, *ENCODE_ARGS), torchrun=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (
        "encoded 2 shards" in res.stdout and "encoded 1 shards" in res.stdout
    )  # both ranks worked
    assert_same_store(out, env["tokens"])


def test_other_tokenizer_version_is_refused(env, tmp_path, capsys):
    out = tmp_path / "tokens"
    shutil.copytree(env["tokens"], out)
    shutil.rmtree(out / "_commits" / "train")  # even an unfinished store keeps its tokenizers
    other = make_tokenizers(tmp_path / "other", env["corpus"], seed=1)
    assert main(encode_argv(env["corpus"], other, out, *ENCODE_ARGS)) == 2
    err = capsys.readouterr().err
    assert "refusing to encode" in err and "S2L2A" in err and "version" in err
    assert not (out / "_commits" / "train").exists()  # nothing was written
    with pytest.raises(TokenizerMismatchError, match="DEM"):
        encode(
            env["corpus"],
            other,
            out,
            EncodeConfig(n_crops=CROPS, crop_px=CROP_SIZE, progress=False),
        )


def test_bad_inputs_give_clear_errors(env, tmp_path, capsys):
    argv = encode_argv(tmp_path / "nope", env["tokenizers"], tmp_path / "t", *ENCODE_ARGS)
    assert main(argv) == 2
    assert "does not exist" in capsys.readouterr().err
    out = tmp_path / "tokens"
    shutil.copytree(env["tokens"], out)
    with pytest.raises(EncodeError, match="does not match"):
        encode(
            env["corpus"],
            env["tokenizers"],
            out,
            EncodeConfig(n_crops=CROPS + 1, crop_px=CROP_SIZE, progress=False),
        )
    with pytest.raises(EncodeError, match="crop-size"):
        EncodeConfig(crop_px=100)
    with pytest.raises(EncodeError, match="no LULC tokenizer"):
        shutil.copytree(env["tokenizers"], tmp_path / "toks")
        shutil.rmtree(tmp_path / "toks" / "lulc")
        encode(
            env["corpus"],
            tmp_path / "toks",
            tmp_path / "t2",
            EncodeConfig(n_crops=CROPS, crop_px=CROP_SIZE, progress=False),
        )


def test_subset_of_modalities_and_corpus_without_index(env, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(env["corpus"], corpus, ignore=shutil.ignore_patterns("index.parquet"))
    toks = make_tokenizers(tmp_path / "toks", corpus, modalities=("DEM", "GEO"))
    cfg = EncodeConfig(n_crops=2, crop_px=32, batch=7, modalities=("dem", "GEO"), progress=False)
    report = encode(corpus, toks, tmp_path / "tokens", cfg)
    assert report.splits[0].valid_rows == N_SAMPLES - len(INVALID_ROWS)
    arrays = store_arrays(tmp_path / "tokens" / "train.zarr")
    assert set(arrays) == {"DEM", "GEO", "crops", "valid"}
    rows = np.flatnonzero(arrays["valid"])
    np.testing.assert_array_equal(
        arrays["crops"][rows], draw_crops([f"train/row-{r}" for r in rows], 2, 32)
    )


def _encode_cfg(**kw):
    return EncodeConfig(n_crops=CROPS, crop_px=CROP_SIZE, batch=BATCH, progress=False, **kw)


def test_resume_redoes_committed_shards_whose_files_are_gone_or_truncated(env, tmp_path):
    """Issue 15 item 5: markers are not trusted blindly; a deleted or truncated chunk file
    under a committed marker is re-encoded on resume (and the CLI says so)."""
    out = tmp_path / "tokens"
    shutil.copytree(env["tokens"], out)
    store = out / "train.zarr"
    (store / "S2L2A" / "c" / "1" / "0" / "0").unlink()
    crops = store / "crops" / "c" / "2" / "0" / "0"
    crops.write_bytes(crops.read_bytes()[:-7])
    res = run_cli(*encode_argv(env["corpus"], env["tokenizers"], out, *ENCODE_ARGS))
    assert res.returncode == 0, res.stderr
    assert "committed shard 1 failed its check (the S2L2A chunk file is missing)" in res.stdout
    assert "committed shard 2 failed its check (the crops chunk file has" in res.stdout
    assert "1 already committed; encoded 2 shards" in res.stdout
    assert_same_store(out, env["tokens"])
    assert verify_tokens(out).ok


def test_verify_committed_redoes_a_flipped_shard(env, tmp_path):
    """A flipped byte keeps the file size: the cheap check lets it pass, ``verify_committed``
    compares the checksums and re-encodes the shard."""
    out = tmp_path / "tokens"
    shutil.copytree(env["tokens"], out)
    chunk = out / "train.zarr" / "DEM" / "c" / "0" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[5] ^= 0xFF
    chunk.write_bytes(bytes(data))
    cheap = encode(env["corpus"], env["tokenizers"], out, _encode_cfg())
    assert cheap.splits[0].redone == [] and cheap.encoded_shards == 0
    full = encode(env["corpus"], env["tokenizers"], out, _encode_cfg(verify_committed=True))
    assert [s for s, _ in full.splits[0].redone] == [0]
    assert "DEM checksum differs" in full.splits[0].redone[0][1]
    assert full.encoded_shards == 1
    assert_same_store(out, env["tokens"])
    assert verify_tokens(out).ok


def test_a_shard_changed_during_the_run_fails_the_split(env, tmp_path, monkeypatch):
    """The end of a split re-checks what it leaves committed: a shard that another writer
    damaged while this job ran is an error, not a finished store."""
    import terraloom.tokenize_jobs.encode as enc

    out = tmp_path / "tokens"
    real = enc.write_shard

    def write_then_interfere(store_path, arrays, shard, *args, **kwargs):
        path = real(store_path, arrays, shard, *args, **kwargs)
        if shard == 2:
            (store_path / "GEO/c/0/0/0").delete()  # a Location: any backend
        return path

    monkeypatch.setattr(enc, "write_shard", write_then_interfere)
    with pytest.raises(EncodeError, match=r"changed while it was being encoded \(shard 0: the GEO"):
        encode(env["corpus"], env["tokenizers"], out, _encode_cfg())


def test_a_second_encode_is_refused_while_another_holds_the_output(env, tmp_path):
    """Issue 15 item 10: a second encode into an output that a live job holds stops with
    one line naming the holder (exit 2), instead of a misleading layout error or a race;
    once the holder is gone (SIGKILLed: its lease is stale) the next encode takes over."""
    out = tmp_path / "tokens"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from tokenize_jobs.encode import acquire_encode_lease as a; "
            f"lease = a({str(out)!r}); print('held', flush=True); sys.stdin.read()",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        args = encode_argv(env["corpus"], env["tokenizers"], out, *ENCODE_ARGS)
        refused = run_cli(*args)
        assert refused.returncode == 2, refused.stderr
        lines = refused.stderr.strip().splitlines()
        assert len(lines) == 1, refused.stderr
        assert "another encode is writing this token store" in lines[0]
        assert f"pid {holder.pid}" in lines[0] and "Traceback" not in refused.stderr
        assert not (out / "train.zarr").exists()  # refused before touching the store
    finally:
        holder.kill()
        holder.wait()
    resumed = run_cli(*args)  # the holder died with its lease held: stale, taken over
    assert resumed.returncode == 0, resumed.stderr
    assert "encoded 3 shards" in resumed.stdout
    assert verify_tokens(out).ok
    assert not (out / "_commits" / "lease.json").exists()  # released at the end


def test_disk_full_is_one_line_and_the_rerun_resumes(env, tmp_path, monkeypatch, capsys):
    """Issue 15.10: ENOSPC while writing shard 2 of 3 -> exit 1 with one line saying the
    token store is resumable; the re-run encodes only the shards not committed and the
    store equals an uninterrupted one."""
    import errno

    import terraloom.tokenize_jobs.encode as encode_mod

    real_write = encode_mod.write_shard
    calls = {"n": 0}

    def full_disk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "shard")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(encode_mod, "write_shard", full_disk)
    out = tmp_path / "tokens"
    argv = encode_argv(env["corpus"], env["tokenizers"], out, *ENCODE_ARGS)
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "no space left" in err and "resumable" in err
    assert sorted(read_commits(out / "train.zarr")) == [0]
    monkeypatch.setattr(encode_mod, "write_shard", real_write)
    assert main(argv) == 0
    assert_same_store(env["tokens"], out)
