"""Beam wiring: options pass-through, BuildCorpus with TestPipeline + assert_that, counters."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from build_support import small_build_cmd

from terraloom.pipeline.beam import BuildCorpus, beam_options, query_counters
from terraloom.pipeline.build import BuildJob, all_blocks, finalize, prepare
from terraloom.pipeline.corpus_writer import is_committed
from terraloom.pipeline.verify import array_digests


def test_beam_options_direct_defaults() -> None:
    one = beam_options(None, 1).get_all_options()
    assert (
        one["runner"] == "DirectRunner"
        and one["direct_running_mode"] == "in_memory"
        and one["direct_num_workers"] == 1
    )
    two = beam_options(None, 2).get_all_options()
    assert two["direct_running_mode"] == "multi_processing" and two["direct_num_workers"] == 2


def test_beam_options_pass_through_wins() -> None:
    opts = beam_options(
        "DataflowRunner", 8, ["--project=p", "--region=europe-west4", "--num_workers=3"]
    ).get_all_options()
    assert (
        opts["runner"] == "DataflowRunner" and opts["project"] == "p" and opts["num_workers"] == 3
    )
    flink = beam_options("FlinkRunner", 4, ["--flink_master=host:8081"]).get_all_options()
    assert flink["parallelism"] == 4 and flink["flink_master"] == "host:8081"
    mp = beam_options(None, 4, ["--direct_num_workers=3"]).get_all_options()
    assert mp["direct_num_workers"] == 3
    with pytest.raises(ValueError, match="either"):
        beam_options("FlinkRunner", 1, ["--runner=DirectRunner"])


def test_build_corpus_transform_outcomes_and_counters(
    tiny_plan: tuple[Path, Any], tmp_path: Path, tiny_reference: dict[str, Any]
) -> None:
    """BuildCorpus on TestPipeline: one outcome per block, counters = the reference run's counts."""
    plan, config = tiny_plan
    out = tmp_path / "corpus"
    manifest = prepare(plan, out, config, tiny_reference["shard_samples"])
    keys = tuple(all_blocks(manifest))
    job = BuildJob(str(out), config, tiny_reference["shard_samples"])
    p = TestPipeline(options=beam_options(None, 1))
    outcomes = p | BuildCorpus(job, keys)
    summary = outcomes | beam.Map(lambda o: (str(o.key), o.n_rows, o.skipped))
    want = [(str(k), tiny_reference["block_rows"][str(k)], False) for k in keys]
    assert_that(summary, equal_to(want))
    result = p.run()
    result.wait_until_finish()
    assert all(is_committed(out, k) for k in keys)
    counters = query_counters(result)
    assert counters["blocks_written"] == len(keys)
    assert counters["samples_accepted"] == tiny_reference["accepted"]
    assert counters.get("samples_rejected", 0) == tiny_reference["rejected"]
    for reason, n in tiny_reference["rejected_by_reason"].items():
        assert counters[f"samples_rejected_{reason}"] == n
    assert counters["bytes_read"] > 0 and counters["msec_write"] >= 0
    finalize(out, manifest)
    assert array_digests(out) == tiny_reference["digests"]


def test_direct_runner_multi_processing_writes_to_s3_with_options_from_the_command_line(
    small_plan: Path, small_reference: dict[str, Any], s3_bucket: str, tmp_path: Path
) -> None:
    """Issue 19: Beam's DirectRunner in multi_processing mode (2 worker processes) builds
    into the S3 endpoint; the endpoint and the credentials are given only as
    ``--storage-option`` (the environment has none), so the workers get them with the
    pickled output Location. The store equals the local build, and no object the build
    wrote holds the credentials."""
    import os
    import subprocess

    from terraloom.storage import Location
    from tests.pipeline.conftest import same_corpus

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    key, secret = "AKIAsekritkey19", "sekrit-secret-19"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_") or k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE")
    }
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    out = f"{s3_bucket}/corpus"
    run = subprocess.run(
        [
            *small_build_cmd(small_plan, out, "beam", "2"),
            "--storage-option",
            f"endpoint_url={endpoint}",
            "--storage-option",
            f"key={key}",
            "--storage-option",
            f"secret={secret}",
            "--storage-option",
            "client_kwargs.region_name=us-east-1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "engine: beam (2 workers)" in run.stdout
    same_corpus(out, small_reference)
    loc = Location.parse(out)
    for rel in loc.walk_files():
        data = (loc / rel).read_bytes()
        assert key.encode() not in data and secret.encode() not in data, rel
    assert secret not in run.stdout + run.stderr
    assert os.listdir(tmp_path) == []
