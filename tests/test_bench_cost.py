"""``bench/cost.py``: the cost model computes what it says from given inputs."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cost():
    spec = importlib.util.spec_from_file_location("bench_cost", ROOT / "bench" / "cost.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


HAND = {
    "samples": 3600,
    "plan_cpu_s_per_sample": 0.0,
    "build_cpu_s_per_sample": 1.0,
    "encode_cpu_s_per_sample": 0.0,
    "cpu_efficiency": 1.0,
    "dataflow_vcpus_per_worker": 4,
    "dataflow_mem_gb_per_worker": 16,
    "dataflow_usd_per_vcpu_hour": 1.0,
    "dataflow_usd_per_gb_hour": 0.0,
    "dask_vcpus_per_worker": 8,
    "dask_usd_per_worker_hour": 1.0,
    "corpus_bytes_per_sample": 1e6,
    "token_bytes_per_sample": 0,
    "storage_usd_per_gb_month": 1.0,
    "storage_months": 2,
    "shard_samples": 36,
    "corpus_arrays": 3,
    "token_arrays": 1,
    "plan_requests_per_sample": 0,
    "build_requests_per_sample": 0,
    "usd_per_1000_writes": 1.0,
    "usd_per_1000_reads": 0.0,
    "train_samples_seen": 3.6e6,
    "train_samples_per_s": {"base": 1000.0},
    "gpu_usd_per_hour": 4.0,
    "encode_gpu_s_per_sample": 1.0,
}


def test_hand_checked_example() -> None:
    r = _cost().estimate(HAND)
    build = r["stages"]["build"]
    # 3600 samples x 1 CPU-s = 1 CPU-hour; 4 vCPUs per Dataflow worker at $1 each
    assert build["cpu_hours"] == pytest.approx(1.0)
    assert build["dataflow_worker_hours"] == pytest.approx(0.25)
    assert build["dataflow_usd"] == pytest.approx(1.0)
    assert build["dask_worker_hours"] == pytest.approx(0.125)
    assert build["dask_usd"] == pytest.approx(0.125)
    assert r["corpus_worker_hours"] == pytest.approx(0.25)
    st = r["storage"]
    assert st["stored_gb"] == pytest.approx(3.6)
    assert st["storage_usd"] == pytest.approx(7.2)  # 3.6 GB x $1 x 2 months
    # 100 shards x (3 corpus + 1 token arrays + 2 commit markers); reads: 100 x 3 corpus arrays
    assert st["writes"] == pytest.approx(600) and st["reads"] == pytest.approx(300)
    assert st["request_usd"] == pytest.approx(0.6)
    assert r["training"]["base"]["gpu_hours"] == pytest.approx(1.0)  # 3.6M / 1000/s
    assert r["training"]["base"]["usd"] == pytest.approx(4.0)
    assert r["encode_gpu_hours"] == pytest.approx(1.0)


def test_inputs_file_build_json_and_cli(tmp_path: Path) -> None:
    cost = _cost()
    inputs = tmp_path / "prices.yaml"
    inputs.write_text("samples: 7200\ndask_usd_per_worker_hour: 2.5\n")
    build = tmp_path / "build.json"
    build.write_text('{"runs": [{"samples": 10, "cpu_s": 5.0}, {"samples": 10, "cpu_s": 2.0}]}')
    got = cost.load_inputs(inputs, ["storage_months=3"], build)
    assert got == {
        "samples": 7200,
        "dask_usd_per_worker_hour": 2.5,
        "build_cpu_s_per_sample": 0.2,  # the best run's CPU-s per sample
        "storage_months": 3,
    }
    run = subprocess.run(
        [sys.executable, "bench/cost.py", "--inputs", str(inputs)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith("corpus_9m_worker_hours=")
    bad = subprocess.run(
        [sys.executable, "bench/cost.py", "--set", "sampels=1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown inputs ['sampels']" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_plan_json_gives_per_sample_planning_figures(tmp_path: Path) -> None:
    """bench/plan.py --json (run for real on a small subset of the synthetic API) feeds the
    cost model: per-cell figures over the planned samples per cell."""
    plan_json = tmp_path / "plan.json"
    run = subprocess.run(
        [sys.executable, "bench/plan.py", "--bbox", "15,45.9,15.4,46.1", "--rounds", "1",
         "--engine", "local", "--latency", "0", "--json", str(plan_json)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1].startswith("plan_cells_per_s=")
    doc = json.loads(plan_json.read_text())
    assert doc["plans_equal"] is True and doc["samples"] > 0
    d = doc["distributed"]
    assert d["requests_per_cell"] > 0 and d["kb_per_cell"] > 0 and d["cpu_s_per_cell"] > 0
    got = _cost().load_inputs(None, [], None, plan_json)
    spc = doc["samples"] / doc["cells"]
    assert got["plan_requests_per_sample"] == pytest.approx(d["requests_per_cell"] / spc)
    assert got["plan_bytes_read_per_sample"] == pytest.approx(d["kb_per_cell"] * 1e3 / spc)
    assert got["plan_cpu_s_per_sample"] == pytest.approx(d["cpu_s_per_cell"] / spc)
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ValueError, match="bench/plan.py --json"):
        _cost().load_inputs(None, [], None, empty)


def test_build_json_gives_bytes_per_sample_only_from_a_whole_corpus_build(tmp_path: Path) -> None:
    from terraloom.schemas.layouts import CORPUS_MODALITIES

    cost = _cost()
    some = {"samples": 10, "cpu_s": 2.0, "bytes_written": 50.0, "bytes_decoded": 90.0,
            "modalities": ["S2L2A", "DEM"]}  # fmt: skip
    build = tmp_path / "build.json"
    build.write_text(json.dumps({"runs": [some]}))
    assert set(cost.load_inputs(None, [], build)) == {"build_cpu_s_per_sample"}
    whole = {**some, "samples": 20, "cpu_s": 8.0, "modalities": list(CORPUS_MODALITIES)}
    build.write_text(json.dumps({"runs": [some, whole]}))
    got = cost.load_inputs(None, [], build)
    # the whole corpus's CPU, though the partial build was faster per sample
    assert got["build_cpu_s_per_sample"] == pytest.approx(0.4)  # 8 CPU-s / 20 samples
    assert got["corpus_bytes_per_sample"] == pytest.approx(2.5)  # 50 B / 20 samples
    assert got["build_bytes_read_per_sample"] == pytest.approx(4.5)
