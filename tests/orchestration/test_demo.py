"""The main job end to end on the tiny world (``--quick``), then resume / skip behaviour."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from gen_support import one_thread  # noqa: F401  (autouse: one torch thread)

from terraloom.orchestration.demo import (
    QUICK,
    STAGES,
    DemoConfig,
    Stage,
    add_demo_args,
    demo_config_from_args,
    main,
    run_stages,
)


def _ran(results: dict[str, dict]) -> list[str]:
    """Stages a run executed (``run_stages`` marks the skipped ones)."""
    return [name for name, r in results.items() if not r.get("skipped")]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo") / "demo_out"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["--out", str(out), "--quick"]) == 0
    return out, buf.getvalue()


def test_quick_demo_runs_every_stage_and_writes_the_outputs(quick_run: tuple[Path, str]) -> None:
    out, log = quick_run
    for stage in STAGES:
        assert (out / f".{stage.name}.done").is_file(), stage.name
        assert f"] {stage.name}:" in log  # progress header of every stage
    ev = json.loads((out / "evaluation" / "evaluation.json").read_text())
    assert {r["task"] for r in ev["rows"]} == {
        "S1GRD -> S2L2A",
        "S2L2A -> LULC",
        "S2L2A -> DEM",
        "S2L2A -> S1GRD",
        "S2L2A -> GEO",
    }
    assert {r["key"] for r in ev["rows"] if r["key"] == "grid"} == {"grid"}
    tim = json.loads((out / "tim" / "tim.json").read_text())
    assert list(tim["finetune"]) == ["none", "LULC", "S2L2A"]
    for run in tim["finetune"].values():
        assert len(run["miou"]["values"]) == 3 and 0 <= run["miou"]["mean"] <= 1
    assert set(tim["inference_only"]) == {"none", "S2L2A"}
    panels = json.loads((out / ".generate.done").read_text())["panels"]
    assert panels and all(Path(p).is_file() for p in panels)
    report = (out / "report.md").read_text()
    assert "| task | metric | model | trivial baseline |" in report
    assert "Thinking-in-Modalities" in report and "![" in report and "+-" in report
    assert (out / "runs" / "pretrain" / "latest").is_file()
    # the summary printed at the end: the table and the output paths
    assert "median error (km)" in log and str(out / "report.md") in log


def test_quick_demo_publishes_and_verifies_its_corpus(quick_run: tuple[Path, str]) -> None:
    from terraloom.pipeline.publish import verify_published
    from terraloom.pipeline.publish.card import read_front_matter
    from terraloom.pipeline.publish.checksums import verify_sums
    from terraloom.pipeline.publish.stac import validate_stac

    out, log = quick_run
    done = json.loads((out / ".publish.done").read_text())
    root = out / "published" / "1.0.0"
    assert Path(done["path"]) == root and done["verified"]["ok"] and done["tokens"]
    n_index = sum(json.loads((out / ".build.done").read_text())["accepted"].values())
    assert sum(done["samples"].values()) == n_index and done["webdataset_shards"] > 0
    assert validate_stac(root) == [] and verify_sums(root) == []
    assert verify_published(out / "published").ok
    card = (root / "README.md").read_text()
    assert read_front_matter(root / "README.md")["license"] == "cc-by-4.0"
    assert "**Synthetic data.**" in card and "Copernicus Sentinel data" not in card
    assert (root / "coverage.png").is_file() and (root / "tokens" / "train.zarr").is_dir()
    assert done["gallery"] and all(Path(g).is_file() for g in done["gallery"])
    report = (out / "report.md").read_text()
    assert "[dataset card](published/1.0.0/README.md)" in report
    assert f"OK, {done['verified']['digests']} SHA256 digests checked" in report
    assert "![coverage map](published/1.0.0/coverage.png)" in report
    # a flipped byte in a published file is found by the same check the stage ran
    target = root / "index.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    original = target.read_bytes()
    target.write_bytes(bytes(data))
    try:
        assert not verify_published(root).ok
    finally:
        target.write_bytes(original)


def test_quick_demo_probes_pretrained_and_random_init_embeddings(
    quick_run: tuple[Path, str],
) -> None:
    out, _ = quick_run
    probe = json.loads((out / "probe" / "probe.json").read_text())
    assert list(probe["inputs"]) == ["+".join(i) for i in QUICK.probe.inputs]
    for study in probe["inputs"].values():
        assert set(study["probes"]) == {"pretrained", "random_init", "pixel_means"}
        for r in [*study["probes"].values(), study["majority"]]:
            assert 0 <= r["accuracy"] <= 1 and 0 <= r["miou"] <= 1
        n = study["patches"]
        assert n["train"] > 0 and n["val"] > 0
        # the majority baseline is the train split's most frequent class, scored on val
        assert 0 <= study["majority"]["class"] < 9
    # per-patch embeddings of both encoders and splits, written by the embed job
    for enc in ("pretrained", "random_init"):
        for split in ("train", "val"):
            assert (out / "probe" / "embeddings" / "S1GRD" / enc / split / "patches.zarr").is_dir()
    report = (out / "report.md").read_text()
    assert "## Linear probe" in report and "same encoder at random init (seed 0)" in report
    assert "majority class (" in report


def test_second_run_skips_every_finished_stage(
    quick_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = quick_run
    before = {s.name: (out / f".{s.name}.done").read_text() for s in STAGES}
    results = run_stages(out, STAGES, QUICK)
    assert _ran(results) == [] and list(results) == [s.name for s in STAGES]
    assert "finished earlier, skipped" in capsys.readouterr().out
    assert {s.name: (out / f".{s.name}.done").read_text() for s in STAGES} == before


def test_a_missing_marker_reruns_only_that_stage(
    quick_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = quick_run
    (out / ".report.done").unlink()
    (out / "report.md").unlink()
    assert _ran(run_stages(out, STAGES, QUICK)) == ["report"]
    assert (out / "report.md").is_file()


def test_a_changed_budget_reruns_from_the_first_stage_it_affects(
    quick_run: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, _ = quick_run
    results = run_stages(out, STAGES, dataclasses.replace(QUICK, n_examples=2))
    assert "budgets changed since the last run {'n_examples': (1, 2)}" in capsys.readouterr().out
    assert _ran(results) == ["generate", "report"]
    panels = json.loads((out / ".generate.done").read_text())["panels"]
    n_val = json.loads((out / ".encode.done").read_text())["splits"]["val"]["valid"]
    assert len(panels) == 2 * min(2, n_val)  # two chains x up to two val samples
    assert all(Path(p).is_file() for p in panels)


def test_stages_that_feed_nothing_later_rerun_alone_with_the_report(
    quick_run: tuple[Path, str],
) -> None:
    out, _ = quick_run
    run_stages(out, STAGES, QUICK)  # back to QUICK's budgets (earlier tests changed some)
    (out / ".publish.done").unlink()  # a re-publish of the same corpus is a no-op
    assert _ran(run_stages(out, STAGES, QUICK)) == ["publish", "report"]
    probe = dataclasses.replace(QUICK, probe=dataclasses.replace(QUICK.probe, steps=40))
    assert _ran(run_stages(out, STAGES, probe)) == ["probe", "report"]
    assert (out / "runs" / "pretrain" / "latest").is_file()  # train's output untouched
    assert json.loads((out / "probe" / "probe.json").read_text())["setup"]["steps"] == 40


def test_runner_feeds_later_and_follows_any(tmp_path: Path) -> None:
    calls: list[str] = []

    def stage(name: str, **kw: Any) -> Stage:
        return Stage(name, lambda out, cfg: calls.append(name) or {}, name, (), ("report",), **kw)

    stages = (
        stage("a"),
        stage("side", feeds_later=False),
        stage("b"),
        stage("r", follows_any=True),
    )
    run_stages(tmp_path, stages, QUICK)
    assert calls == ["a", "side", "b", "r"]
    calls.clear()
    (tmp_path / ".side.done").unlink()
    run_stages(tmp_path, stages, QUICK)
    assert calls == ["side", "r"]  # b does not read side's output; the report follows
    calls.clear()
    (tmp_path / ".a.done").unlink()
    run_stages(tmp_path, stages, QUICK)
    assert calls == ["a", "side", "b", "r"]  # a feeds everything after it


def test_runner_resumes_after_a_failed_stage(tmp_path: Path) -> None:
    calls: list[str] = []

    def ok(name: str) -> Stage:
        return Stage(
            name, lambda out, cfg: calls.append(name) or {"name": name}, name, (), ("report",)
        )

    def boom(out: Path, cfg: DemoConfig) -> dict:
        calls.append("boom")
        raise RuntimeError("killed")

    stages = (ok("a"), Stage("b", boom, "b"), ok("c"))
    with pytest.raises(RuntimeError):
        run_stages(tmp_path, stages, QUICK)
    assert calls == ["a", "boom"] and not (tmp_path / ".b.done").exists()
    calls.clear()
    run_stages(tmp_path, (stages[0], ok("b"), stages[2]), QUICK)
    assert calls == ["b", "c"]
    assert json.loads((tmp_path / ".c.done").read_text())["name"] == "c"


def _args(argv: list[str]) -> DemoConfig:
    import argparse

    parser = argparse.ArgumentParser()
    add_demo_args(parser)
    return demo_config_from_args(parser.parse_args(argv))


def test_nested_overrides_keep_the_rest_of_the_stage_config(tmp_path: Path) -> None:
    cfg = _args(["--set", "tokenizer.steps=400", "--set", "pretrain.model.dim=64"])
    assert cfg.tokenizer.steps == 400 and cfg.pretrain.model.dim == 64
    # the demo's recipe, not the stage dataclass' own defaults, for every other field
    assert cfg.tokenizer.batch == DemoConfig().tokenizer.batch == 16
    assert cfg.tokenizer.linear_init and cfg.tokenizer.entropy_weight is None
    assert cfg.pretrain.model.heads == 4 and cfg.pretrain.steps == DemoConfig().pretrain.steps
    assert cfg.plan == DemoConfig().plan
    f = tmp_path / "demo.yaml"
    f.write_text("tim:\n  seeds: [3, 4, 5]\n  finetune: {steps: 7}\n")
    cfg = _args(["--quick", "--config", str(f), "--set", "tim.finetune.lr=0.01"])
    assert cfg.tim.seeds == (3, 4, 5) and cfg.tim.finetune.steps == 7
    assert (
        cfg.tim.finetune.lr == 0.01 and cfg.tim.finetune.batch_size == QUICK.tim.finetune.batch_size
    )
    assert cfg.pretrain == QUICK.pretrain


def test_bad_demo_config_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--set", "encode.crop_px=96", "--out", "unused"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pretrain.model.image_px" in err
    assert main(["--set", "tokenizer.stepz=3", "--out", "unused"]) == 2
    assert "stepz" in capsys.readouterr().err


def test_model_budgets_do_not_retrain_the_tokenizers(tmp_path: Path) -> None:
    calls: list[str] = []
    stages = tuple(
        Stage(s.name, lambda out, cfg, n=s.name: calls.append(n) or {}, s.name, s.config, ())
        for s in STAGES
        if s.name in ("tokenizers", "encode", "train")
    )
    run_stages(tmp_path, stages, QUICK)
    calls.clear()
    more = dataclasses.replace(QUICK, pretrain=dataclasses.replace(QUICK.pretrain, steps=30))
    run_stages(tmp_path, stages, more)
    assert calls == ["train"]
    calls.clear()
    run_stages(
        tmp_path,
        stages,
        dataclasses.replace(more, tokenizer=dataclasses.replace(QUICK.tokenizer, steps=5)),
    )
    assert calls == ["tokenizers", "encode", "train"]


def test_the_report_counts_the_corpus_per_split() -> None:
    from terraloom.orchestration.demo import _counts

    marker = {"accepted": {"train": 254, "val": 60}, "planned": {"train": 264, "val": 63}}
    assert _counts(marker) == (
        "accepted 314 of 327 planned samples (train 254 of 264, val 60 of 63)"
    )
    assert _counts({"accepted": {}, "planned": {"val": 2}}) == (
        "accepted 0 of 2 planned samples (val 0 of 2)"
    )


def test_a_remote_out_runs_in_a_local_staging_folder_and_is_mirrored_there(
    memory_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--out memory://...`` (as ``s3://``): the stages run in the location's local cache
    folder, the output lands at the location, and no local folder named after the scheme
    appears; a second run copies nothing that is already there."""
    from terraloom.orchestration.demo import mirror_output
    from terraloom.storage import Location
    from terraloom.storage.transfer import cache_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TERRALOOM_CACHE", str(tmp_path / "cache"))
    out = f"{memory_root}/demo"
    assert main(["--out", out, "--until", "registry", "--quick"]) == 0
    dest = Location.parse(out)
    assert ".registry.done" in dest.walk_files()
    work = cache_dir(dest, "demo")
    assert (work / ".registry.done").read_bytes() == (dest / ".registry.done").read_bytes()
    assert not (tmp_path / "memory:").exists()
    assert mirror_output(work, dest) == 0  # everything already there with its size


def test_a_malformed_out_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--out", "s3:/bucket/x", "--until", "registry"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("terraloom-demo: error:")
    assert list(tmp_path.iterdir()) == []
