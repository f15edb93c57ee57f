"""Continual pretraining of TerraMind v1, end to end on ``tiny`` with random weights.

corpus -> pre-tokenize with TerraMind's own tokenizer encoders (``terraloom-tokenize
encode``) -> ``import-terramind`` -> ``train --init`` (a few steps: finite, decreasing loss)
-> ``export-terramind`` -> terratorch's TerraMind loads it strictly and computes what the
trained terraloom model computes. Then ``embed`` writes per-sample GeoParquet embeddings
(and per-patch Zarr) of the trained model, resumably.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
import torch
from encode_support import encode_argv
from interop_support import (
    build_terramind,
    import_argv,
    make_pair,
    need_wheel,
    terraloom_outputs,
    terramind_outputs,
)

from terraloom.model.cli import main as model_main
from terraloom.model.transformer import TerraloomModel
from terraloom.schemas.tables import GEOMETRY_COLUMN
from terraloom.tokenize_jobs.cli import main as tokenize_main
from terraloom.tokenize_jobs.testing import make_toy_corpus
from terraloom.tokenize_jobs.tokenizers.terramind import convert_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tokenize_jobs"))
from test_terramind import reference  # noqa: E402 - the tokenizer reference of its own tests

MODS = ("S1GRD", "LULC")


@pytest.fixture(autouse=True)
def _wheel() -> None:
    need_wheel()


def _index(corpus: Path, split: str, n: int) -> None:
    """A minimal corpus index (the columns ``embed`` reads) for the toy corpus."""
    geoms = [
        shapely.to_wkb(shapely.box(10 + i * 0.1, 45, 10.02 + i * 0.1, 45.02)) for i in range(n)
    ]
    table = pa.table(
        {
            "sample_id": [f"{split}_{i:03d}" for i in range(n)],
            "split": [split] * n,
            "row": np.arange(n, dtype=np.int64),
            "cell_id": [f"{100 + i}U_200R" for i in range(n)],
            GEOMETRY_COLUMN: geoms,
            "center_lon": [10.01 + i * 0.1 for i in range(n)],
            "center_lat": [45.01] * n,
            "time_S1GRD": pa.array(
                [1_700_000_000_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    pq.write_table(table, corpus / "index.parquet")


def test_continual_pretraining_chain(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corpus = make_toy_corpus(
        tmp_path / "corpus", n_samples={"train": 8, "val": 8}, modalities=MODS, shard_samples=8
    )
    # TerraMind's tokenizers (released-file layout, random weights) -> a tokenizer root
    toks = tmp_path / "tokenizers"
    for i, m in enumerate(MODS):
        _, sd = reference(m, seed=10 + i, dim=64, depth=1)
        torch.save(sd, tmp_path / f"TerraMind_Tokenizer_{m}.pt")
        convert_checkpoint(tmp_path / f"TerraMind_Tokenizer_{m}.pt", m, toks / m.lower())
    encode = ("--crops", "2", "--batch", "8", "--device", "cpu", "--modalities", ",".join(MODS))
    assert tokenize_main(encode_argv(corpus, toks, tmp_path / "tokens", *encode)) == 0
    # a TerraMind v1 tiny checkpoint (random) -> terraloom
    tm = build_terramind("tiny", ("S1GRD",), MODS, MODS, seed=3)
    torch.save(tm.state_dict(), tmp_path / "TerraMind_v1_tiny.pt")
    run0 = tmp_path / "imported"
    argv = import_argv(tmp_path / "TerraMind_v1_tiny.pt", run0, "--variant", "tiny")
    assert model_main(argv) == 0
    steps = 8
    run = tmp_path / "run"
    assert (
        model_main(
            [
                "train",
                "--init",
                str(run0),
                "--out-dir",
                str(run),
                "--steps",
                str(steps),
                "--quiet",
                "--set",
                f"data.tokens={tmp_path / 'tokens'}",
                "--set",
                f"data.corpus={corpus}",
                "--set",
                "data.num_workers=0",
                "--set",
                "batch_size=4",
                "--set",
                "device=cpu",
                "--set",
                "masking.input_budget=64",
                "--set",
                "masking.target_budget=64",
                "--set",
                "optim.lr=1e-3",
                "--set",
                "optim.warmup_steps=0",
                "--set",
                "log_every=1",
                "--set",
                f"eval_every={steps}",
                "--set",
                "eval_batches=1",
                "--set",
                f"ckpt_every={steps}",
                "--set",
                "peak_tflops=1",
                "--set",
                "model.enc_depth=12",
            ]
        )
        == 0
    )
    assert "initialised from" in capsys.readouterr().out
    rows = [
        r
        for r in csv.DictReader((run / "metrics.csv").open())
        if r.get("split") == "train" and r.get("loss")
    ]
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == steps and all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.1, losses
    # back to terratorch: strict load, and the trained weights compute the same there
    out = tmp_path / "TerraMind_v1_tiny_continued.pt"
    assert model_main(["export-terramind", str(run), "--out", str(out)]) == 0
    tm2 = build_terramind("tiny", ("S1GRD",), MODS, MODS, seed=4)
    tm2.load_state_dict(torch.load(out, weights_only=True), strict=True)
    trained = TerraloomModel.from_pretrained(sorted(run.glob("step_*"))[-1]).eval()
    assert not torch.equal(
        trained.state_dict()["encoder.0.attn.qkv.weight"],
        tm.state_dict()["encoder.0.attn.qkv.weight"],
    )
    pair = make_pair(trained.cfg, b=1)
    e1, l1 = terramind_outputs(tm2.eval(), pair)
    e2, l2 = terraloom_outputs(trained, pair)
    assert float((e1 - e2).abs().max()) <= 1e-4
    assert float((l1["tok_lulc@224"] - l2["LULC"]).abs().max()) <= 1e-4


def test_embed_writes_geoparquet_and_patches_resumably(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``embed`` of an imported TerraMind: GeoParquet per sample + per-patch Zarr, resumable."""
    corpus = make_toy_corpus(
        tmp_path / "corpus", n_samples={"val": 8}, splits=("val",), modalities=MODS, shard_samples=8
    )
    tm = build_terramind("tiny", ("S1GRD",), MODS, MODS, seed=3)
    torch.save(tm.state_dict(), tmp_path / "tm.pt")
    run = tmp_path / "imported"
    assert model_main(import_argv(tmp_path / "tm.pt", run)) == 0
    trained = TerraloomModel.from_pretrained(run)
    capsys.readouterr()
    _index(corpus, "val", 8)
    emb = tmp_path / "emb"
    argv = [
        "embed",
        "--checkpoint",
        str(run),
        "--corpus",
        str(corpus),
        "--modalities",
        "S1GRD",
        "--out",
        str(emb),
        "--split",
        "val",
        "--batch",
        "3",
        "--per-patch",
        "--device",
        "cpu",
    ]
    assert model_main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["embedded"] == 3 and first["samples"] == 8
    table = pq.read_table(emb / "embeddings.parquet")
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["primary_column"] == GEOMETRY_COLUMN
    assert table.column("sample_id").to_pylist() == [f"val_{i:03d}" for i in range(8)]
    vecs = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    assert vecs.shape == (8, trained.cfg.dim) and np.isfinite(vecs).all()
    assert not np.allclose(vecs[0], vecs[1])  # samples differ, so do their embeddings
    import zarr

    patches = np.asarray(zarr.open_array(str(emb / "patches.zarr"), mode="r")[:])
    assert patches.shape == (8, 196, trained.cfg.dim)
    np.testing.assert_allclose(patches.astype(np.float32).mean(1), vecs, atol=2e-2)
    # resumable: a re-run redoes only the batch whose part is missing
    (emb / "parts" / "part-000001.parquet").unlink()
    assert model_main(argv) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["embedded"] == 1 and again["already_done"] == 2
    assert pq.read_table(emb / "embeddings.parquet").equals(table)
