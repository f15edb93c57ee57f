"""What a build may leave in its output: one build per output at a time (a lease, on local disk
and on S3), never a credential, and on an object store the very bytes of a local build.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from build_support import (
    CFG,
    ROOT,
    build_cmd,
    small_build_cmd,
    source_env,
    synthetic_plan,
)

from terraloom.pipeline.build import (
    BuildInputError,
    prepare,
    run_build,
)
from terraloom.pipeline.sample import BuildConfig

# --------------------------------------------------------------------------- one build per output


_GATED_BUILD = """
import os, sys, time
sys.path.insert(0, {root!r})
from terraloom.pipeline import sample
from terraloom.pipeline.build import run_build
from terraloom.pipeline.sample import BuildConfig, build_block

def gated(rows, config):
    open({started!r}, "w").close()
    deadline = time.time() + 60
    while not os.path.exists({go!r}) and time.time() < deadline:
        time.sleep(0.02)
    return build_block(rows, config)

sample.build_block = gated  # the in-process DirectRunner's workers look it up at run time
cfg = BuildConfig(modalities=("S2L2A", "DEM"), required=("S2L2A",))
run_build({plan!r}, {out!r}, engine="beam", config=cfg, shard_samples=4, progress=False)
"""


def _cli_build(plan: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = build_cmd(plan, out, "--shard-samples", "4", "--modalities", "S2L2A,DEM")
    cmd += ["--required", "S2L2A", "--no-progress", *extra]
    return subprocess.run(
        cmd, env=source_env(), cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_a_second_build_on_a_busy_output_refuses_with_one_line(tmp_path: Path) -> None:
    """Issue 15.4: two real build processes on one fresh output, different configs. The
    second one refuses (exit 2, one line, no traceback) while the first holds the lease;
    the manifest and the rejects carry the first one's config only."""
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 6})
    out = tmp_path / "corpus"
    started, go = tmp_path / "started", tmp_path / "go"
    code = _GATED_BUILD.format(
        root=str(ROOT), started=str(started), go=str(go), plan=str(plan), out=str(out)
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 120
        while not started.exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert started.exists(), "the first build never reached its blocks"
        second = _cli_build(plan, out, "--max-cloud-fraction", "0.5")
        assert second.returncode == 2, second.stderr
        err = second.stderr.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert "another build is running" in err and f"pid {first.pid}" in err
    finally:
        go.touch()
        _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    manifest = json.loads((out / "_build" / "manifest.json").read_text())
    assert manifest["config"]["max_cloud_fraction"] == CFG.max_cloud_fraction
    assert not (out / "_build" / "lease.json").exists()  # released
    # now free, the second build's config clashes: still one line, exit 2
    again = _cli_build(plan, out, "--max-cloud-fraction", "0.5")
    assert again.returncode == 2 and "max_cloud_fraction: 0.2 -> 0.5" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1, again.stderr
    # and the same config resumes: a no-op on the finished output
    same = _cli_build(plan, out)
    assert same.returncode == 1, same.stderr  # grid-only rows: all rejected, exit 1
    assert "0 written now" in same.stdout


# --------------------------------------------------------------------------- secrets


SECRETS = ("Bearer sekrit-bearer-token-1", "sekrit-aws-key-2")


def _secret_config(**kw: Any) -> BuildConfig:
    return BuildConfig(
        modalities=("S2L2A", "DEM"),
        required=("S2L2A",),
        gdal_options=(
            ("GDAL_HTTP_HEADERS", f"Authorization: {SECRETS[0]}"),
            ("GS_SECRET_ACCESS_KEY", SECRETS[1]),  # rasterio.Env refuses AWS_* keys
            ("GDAL_HTTP_TIMEOUT", "33"),
        ),
        **kw,
    )


def test_credentials_never_reach_a_file_or_a_message(tmp_path: Path) -> None:
    """Issue 15.8: secrets in gdal_options are not in any file of the output (manifest
    included), nor in the config-clash error, which still names what differs; a resume
    whose only change is a rotated secret is the same build."""
    plan = synthetic_plan(tmp_path / "plan.parquet", {"train": 6})
    out = tmp_path / "corpus"
    run_build(plan, out, engine="beam", config=_secret_config(), shard_samples=4, progress=False)
    for path in out.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not any(s.encode() in data for s in SECRETS), path
    cfg = json.loads((out / "_build" / "manifest.json").read_text())["config"]
    assert ["GDAL_HTTP_HEADERS", "<redacted>"] in cfg["gdal_options"]
    assert ["GS_SECRET_ACCESS_KEY", "<redacted>"] in cfg["gdal_options"]
    assert ["GDAL_HTTP_TIMEOUT", "33"] in cfg["gdal_options"]
    with pytest.raises(BuildInputError) as err:
        prepare(plan, out, _secret_config(max_cloud_fraction=0.5), shard_samples=4)
    msg = str(err.value)
    assert not any(s in msg for s in SECRETS), msg
    assert "max_cloud_fraction: 0.2 -> 0.5" in msg and "\n" not in msg
    rotated = dataclasses.replace(
        _secret_config(),
        gdal_options=(("GDAL_HTTP_HEADERS", "Authorization: Bearer new"),)
        + _secret_config().gdal_options[1:],
    )
    prepare(plan, out, rotated, shard_samples=4)  # same job: accepted
    other = dataclasses.replace(_secret_config(), gdal_options=_secret_config().gdal_options[:2])
    with pytest.raises(BuildInputError, match="GDAL_HTTP_TIMEOUT"):
        prepare(plan, out, other, shard_samples=4)  # a real setting changed: refused


# --------------------------------------------------------------------------- object stores


def _objects(out: str) -> dict[str, bytes]:
    from terraloom.storage import Location

    loc = Location.parse(out)
    return {rel: (loc / rel).read_bytes() for rel in loc.walk_files()}


def test_a_memory_build_equals_the_local_one_and_its_rerun_writes_nothing(
    small_plan: Path, small_reference: dict[str, Any], memory_root: str
) -> None:
    """Every output of a build (stores, parts, markers, manifest, frozen plan, tables)
    goes through the storage layer: a build into ``memory://`` is the local build, byte for
    byte, and re-running it finds every block committed and changes no object."""
    from tests.pipeline.conftest import SMALL_SHARD_SAMPLES, same_corpus

    out = f"{memory_root}/corpus"
    run_build(small_plan, out, engine="beam", shard_samples=SMALL_SHARD_SAMPLES, progress=False)
    same_corpus(out, small_reference)
    names = set(_objects(out))
    assert {"_build/manifest.json", "_build/plan.parquet", "_build/final.json"} <= names
    assert "_build/lease.json" not in names  # released
    before = _objects(out)
    again = run_build(
        small_plan, out, engine="beam", shard_samples=SMALL_SHARD_SAMPLES, progress=False
    )
    assert again.blocks_run == 0 and again.blocks_skipped == small_reference["n_blocks"]
    assert _objects(out) == before


def test_two_builds_started_at_once_into_one_s3_output_one_refuses(
    small_plan: Path, small_reference: dict[str, Any], s3_bucket: str, tmp_path: Path
) -> None:
    """Issue 19: two builds started at the same moment on one S3 output: the lease object
    (created with If-None-Match) lets exactly one run; the other exits 2 with one line
    naming the holder, and the store is the uninterrupted build's."""
    from tests.pipeline.conftest import same_corpus

    out = f"{s3_bucket}/corpus"
    procs = [
        subprocess.Popen(
            small_build_cmd(small_plan, out, "beam", "1"),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-2000:]) for p, _, err in results]
    loser_err = next(err for p, _, err in results if p.returncode == 2).strip()
    assert len(loser_err.splitlines()) == 1 and "Traceback" not in loser_err, loser_err
    assert "another build is running" in loser_err and "lease.json" in loser_err
    winner = next(p for p, _, _ in results if p.returncode == 0)
    assert f"pid {winner.pid}" in loser_err
    same_corpus(out, small_reference)
