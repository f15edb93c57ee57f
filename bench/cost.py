"""Cost model: what a 9M-sample corpus and its pretraining cost, from measured rates.

Every figure the model uses is an input: the measured per-sample CPU-seconds, bytes read
and bytes written of plan, build and encode, the measured training throughput per GPU and
model size, and the prices and instance specs (examples, not facts: clouds change prices
and regions differ). Defaults live in :data:`DEFAULTS` with where each came from; a YAML or
JSON file (``--inputs``) and ``--set key=value`` override them, ``--build-json`` takes
the build's CPU-seconds per sample from ``bench/build.py --json`` output, and ``--plan-json``
the planner's CPU-seconds, requests and bytes read per sample from ``bench/plan.py --json``.

The arithmetic (:func:`estimate`) is a pure function of those inputs:

* CPU work of a stage = samples x CPU-s per sample / efficiency; worker-hours = that /
  (vCPUs per worker x 3600), cost = worker-hours x the instance's hourly price (Dataflow:
  vCPU-hours and GB-hours of memory; a Dask cluster: the VM's hourly price);
* encode and training run on GPUs: GPU-hours = samples / (samples/s per GPU) / 3600;
  training sees ``train_samples_seen`` samples (epochs x corpus or a token budget);
* storage = bytes stored x $/GB-month x months; requests = objects written and read x
  the price per 1,000 (writes: one object per array and shard, plus a commit marker).

Last line: ``corpus_9m_worker_hours=<n>``: worker-hours of plan + build + encode's CPU side
on the Dataflow instance type.

    python bench/cost.py
    python bench/cost.py --inputs my_prices.yaml --set samples=9000000 --build-json build.json
    python bench/cost.py --plan-json plan.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

#: Example inputs. Each value says where it comes from; replace any of them with your own.
DEFAULTS: dict[str, Any] = {
    "samples": 9_000_000,  # TerraMesh's size (DESIGN.md)
    # -- measured per sample (2-core dev machine, synthetic world; see docs/scale.md)
    # bench/plan.py --json (dask x2, 4 threads, 558 cells, 0.91 samples per cell): per cell / spc
    "plan_cpu_s_per_sample": 0.0106,  # 9.7 CPU-ms per cell, cluster start-up included
    "plan_bytes_read_per_sample": 49_200,  # 45.0 kB of STAC item JSON per cell (synthetic API)
    "plan_requests_per_sample": 0.225,  # 0.206 requests per cell, pages included
    # bench/build.py --full-run --json, demo world, every corpus modality, 2 workers, idle
    "build_cpu_s_per_sample": 0.167,  # 6.00 samples per CPU-s (5 modalities: 8.88)
    "build_bytes_read_per_sample": 4_510_000,  # decoded from source COGs (upper bound of read)
    "build_requests_per_sample": 60.0,  # example: COG range reads (header + tiles); not measured
    "corpus_bytes_per_sample": 1_512_000,  # corpus files written / samples
    "encode_gpu_s_per_sample": 0.002,  # bench/encode.py on CUDA (example until measured)
    "encode_cpu_s_per_sample": 0.01,  # host side of encode: read, crop, write, checksum
    "token_bytes_per_sample": 10_024,  # token store layout: 4 crops x 2,506 B (bench/loader.py)
    # -- layout (object counts)
    "shard_samples": 32,
    "corpus_arrays": 14,  # arrays of a corpus split (modalities + masks + coordinates)
    "token_arrays": 11,  # arrays of a token-store split
    # -- engines (example instance types and prices, on-demand, one region)
    "dataflow_vcpus_per_worker": 4,  # n2-standard-4
    "dataflow_mem_gb_per_worker": 16,
    "dataflow_usd_per_vcpu_hour": 0.056,  # Dataflow batch vCPU price (example)
    "dataflow_usd_per_gb_hour": 0.003557,  # Dataflow batch memory price (example)
    "dask_vcpus_per_worker": 8,  # c6i.2xlarge
    "dask_usd_per_worker_hour": 0.34,  # on-demand price (example)
    "cpu_efficiency": 0.8,  # share of a vCPU a worker's process keeps busy
    # -- storage (object store, example prices)
    "storage_usd_per_gb_month": 0.023,
    "storage_months": 12,
    "usd_per_1000_writes": 0.005,
    "usd_per_1000_reads": 0.0004,
    "source_egress_usd_per_gb": 0.0,  # reading public data in its own region
    # -- training: samples/s per GPU (../shared/anchors/README.md, H100, bf16)
    "gpu_name": "H100",
    "gpu_usd_per_hour": 4.0,  # example on-demand price per GPU
    "train_samples_per_s": {"tiny": 3026.0, "base": 1074.0, "large": 310.0},
    "train_samples_seen": 1_000_000_000,  # ~500B tokens at 512 tokens per sample (TerraMind v1)
    "cpu_train_samples_per_s_tiny": 7.3,  # bench/train_step.py tiny, batch 8, 2 CPU cores
}


def estimate(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Worker-hours, GPU-hours and dollars per stage from per-sample figures and prices."""
    x = {**DEFAULTS, **inputs}
    n = float(x["samples"])
    gb = 1e9
    stages: dict[str, dict[str, float]] = {}
    for stage, cpu_key in (
        ("plan", "plan_cpu_s_per_sample"),
        ("build", "build_cpu_s_per_sample"),
        ("encode (host)", "encode_cpu_s_per_sample"),
    ):
        cpu_h = n * float(x[cpu_key]) / float(x["cpu_efficiency"]) / 3600
        df_h = cpu_h / float(x["dataflow_vcpus_per_worker"])
        dask_h = cpu_h / float(x["dask_vcpus_per_worker"])
        stages[stage] = {
            "cpu_hours": cpu_h,
            "dataflow_worker_hours": df_h,
            "dataflow_usd": df_h
            * (
                float(x["dataflow_vcpus_per_worker"]) * float(x["dataflow_usd_per_vcpu_hour"])
                + float(x["dataflow_mem_gb_per_worker"]) * float(x["dataflow_usd_per_gb_hour"])
            ),
            "dask_worker_hours": dask_h,
            "dask_usd": dask_h * float(x["dask_usd_per_worker_hour"]),
        }
    shards = n / float(x["shard_samples"])
    writes = shards * (float(x["corpus_arrays"]) + float(x["token_arrays"]) + 2)  # + markers
    reads = n * (float(x["plan_requests_per_sample"]) + float(x["build_requests_per_sample"]))
    reads += shards * float(x["corpus_arrays"])  # encode reads each corpus shard once
    stored_gb = n * (float(x["corpus_bytes_per_sample"]) + float(x["token_bytes_per_sample"])) / gb
    read_gb = (
        n * (float(x["plan_bytes_read_per_sample"]) + float(x["build_bytes_read_per_sample"])) / gb
    )
    storage = {
        "stored_gb": stored_gb,
        "storage_usd": stored_gb
        * float(x["storage_usd_per_gb_month"])
        * float(x["storage_months"]),
        "source_read_gb": read_gb,
        "egress_usd": read_gb * float(x["source_egress_usd_per_gb"]),
        "writes": writes,
        "reads": reads,
        "request_usd": writes / 1000 * float(x["usd_per_1000_writes"])
        + reads / 1000 * float(x["usd_per_1000_reads"]),
    }
    encode_gpu_h = n * float(x["encode_gpu_s_per_sample"]) / 3600
    seen = float(x["train_samples_seen"])
    training = {
        size: {
            "gpu_hours": seen / float(rate) / 3600,
            "usd": seen / float(rate) / 3600 * float(x["gpu_usd_per_hour"]),
        }
        for size, rate in dict(x["train_samples_per_s"]).items()
    }
    worker_hours = sum(s["dataflow_worker_hours"] for s in stages.values())
    return {
        "inputs": x,
        "stages": stages,
        "storage": storage,
        "encode_gpu_hours": encode_gpu_h,
        "encode_gpu_usd": encode_gpu_h * float(x["gpu_usd_per_hour"]),
        "training": training,
        "cpu_training_tiny_hours": seen / float(x["cpu_train_samples_per_s_tiny"]) / 3600,
        "corpus_worker_hours": worker_hours,
    }


def whole_corpus_runs(runs: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The builds of ``bench/build.py --json`` that made every corpus modality
    (``--full-run`` or ``--modalities all``)."""
    from terraloom.schemas.layouts import CORPUS_MODALITIES

    return [
        r
        for r in runs
        if r.get("bytes_written") and set(CORPUS_MODALITIES) <= set(r.get("modalities") or ())
    ]


def build_bytes(runs: list[Mapping[str, Any]]) -> dict[str, float]:
    """Bytes per sample from the whole-corpus builds: what they wrote (the corpus) and
    decoded from the sources (an upper bound of the bytes read: COGs arrive compressed).
    Runs of fewer modalities say nothing about a whole corpus, and give nothing."""
    full = whole_corpus_runs(runs)
    if not full:
        return {}
    r = max(full, key=lambda r: r["samples"])
    return {
        "corpus_bytes_per_sample": float(r["bytes_written"]) / r["samples"],
        "build_bytes_read_per_sample": float(r["bytes_decoded"]) / r["samples"],
    }


def plan_inputs(doc: Mapping[str, Any], where: Path) -> dict[str, float]:
    """Per-sample planning figures from ``bench/plan.py --json``: the distributed planner's
    per-cell medians divided by the planned samples per cell."""
    per_cell = doc.get("distributed") or {}
    spc = float(doc.get("samples_per_cell") or 0.0)
    keys = ("cpu_s_per_cell", "requests_per_cell", "kb_per_cell")
    if spc <= 0 or any(k not in per_cell for k in keys):
        raise ValueError(f"{where}: no distributed figures or samples (bench/plan.py --json)")
    return {
        "plan_cpu_s_per_sample": float(per_cell["cpu_s_per_cell"]) / spc,
        "plan_requests_per_sample": float(per_cell["requests_per_cell"]) / spc,
        "plan_bytes_read_per_sample": float(per_cell["kb_per_cell"]) * 1e3 / spc,
    }


def load_inputs(
    path: Path | None, sets: list[str], build_json: Path | None, plan_json: Path | None = None
) -> dict[str, Any]:
    """Defaults, then a YAML/JSON file, then the benches' JSON, then ``--set`` pairs."""
    import yaml

    out: dict[str, Any] = {}
    if path is not None:
        doc = yaml.safe_load(path.read_text()) or {}
        if not isinstance(doc, dict):
            raise ValueError(f"{path}: expected a mapping of input names to values")
        out.update(doc)
    if build_json is not None:
        doc = json.loads(build_json.read_text())
        runs = [r for r in doc.get("runs", []) if r.get("cpu_s") and r.get("samples")]
        if not runs:
            raise ValueError(
                f"{build_json}: no runs with samples and cpu_s (bench/build.py --json)"
            )
        # a build of every corpus modality is the corpus's cost; else the fastest run
        best = max(whole_corpus_runs(runs) or runs, key=lambda r: r["samples"] / r["cpu_s"])
        out["build_cpu_s_per_sample"] = best["cpu_s"] / best["samples"]
        out.update(build_bytes(runs))
    if plan_json is not None:
        out.update(plan_inputs(json.loads(plan_json.read_text()), plan_json))
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value")
        out[key.strip()] = yaml.safe_load(value)
    unknown = sorted(set(out) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown inputs {unknown}; known: {', '.join(DEFAULTS)}")
    return out


def render(r: Mapping[str, Any]) -> str:
    x = r["inputs"]
    lines = [
        f"corpus of {x['samples']:,.0f} samples; prices and specs are example inputs (bench/cost.py --help)"
    ]
    lines.append(
        f"{'stage':<16}{'CPU-h':>10}{'Dataflow w-h':>14}{'Dataflow $':>12}{'Dask w-h':>11}{'Dask $':>10}"
    )
    for name, s in r["stages"].items():
        lines.append(
            f"{name:<16}{s['cpu_hours']:>10,.0f}{s['dataflow_worker_hours']:>14,.0f}{s['dataflow_usd']:>12,.0f}"
            f"{s['dask_worker_hours']:>11,.0f}{s['dask_usd']:>10,.0f}"
        )
    st = r["storage"]
    lines.append(
        f"storage: {st['stored_gb']:,.0f} GB stored (${st['storage_usd']:,.0f} for {x['storage_months']} months), "
        f"{st['source_read_gb']:,.0f} GB read from sources (egress ${st['egress_usd']:,.0f}), "
        f"{st['writes']:,.0f} writes + {st['reads']:,.0f} reads (${st['request_usd']:,.0f})"
    )
    lines.append(
        f"encode: {r['encode_gpu_hours']:,.1f} {x['gpu_name']} GPU-hours (${r['encode_gpu_usd']:,.0f})"
    )
    lines.append(f"pretraining, {x['train_samples_seen']:,.0f} samples seen, on {x['gpu_name']}:")
    lines.append(f"{'size':<8}{'samples/s/GPU':>15}{'GPU-hours':>12}{'$':>12}")
    for size, t in r["training"].items():
        lines.append(
            f"{size:<8}{float(x['train_samples_per_s'][size]):>15,.0f}{t['gpu_hours']:>12,.0f}{t['usd']:>12,.0f}"
        )
    lines.append(
        f"tiny on 2 CPU cores instead: {r['cpu_training_tiny_hours']:,.0f} hours ({x['cpu_train_samples_per_s_tiny']} samples/s)"
    )
    lines.append(f"corpus_9m_worker_hours={r['corpus_worker_hours']:.0f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--inputs", type=Path, help="YAML/JSON file of inputs overriding the defaults")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one input")
    p.add_argument(
        "--build-json", type=Path, help="bench/build.py --json output (build CPU-s per sample)"
    )
    p.add_argument(
        "--plan-json",
        type=Path,
        help="bench/plan.py --json output (plan CPU-s, requests and bytes per sample)",
    )
    p.add_argument("--json", type=Path, help="also write the estimate here")
    a = p.parse_args(argv)
    try:
        result = estimate(load_inputs(a.inputs, a.set, a.build_json, a.plan_json))
    except (OSError, ValueError, TypeError, KeyError) as exc:
        print(f"cost: {exc}", file=sys.stderr)
        return 2
    if a.json:
        a.json.write_text(json.dumps(result, indent=1) + "\n")
    print(render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
