"""Determinism, caching, the public API and the CLI of the world generator."""

from __future__ import annotations

import filecmp
import json
import tempfile
from pathlib import Path

import pytest

from terraloom.pipeline.world import (
    GENERATOR_VERSION,
    World,
    add_world_parser,
    cached_world,
    generate_world,
    load_world,
)
from terraloom.pipeline.world.cli import main
from terraloom.pipeline.world.generate import code_hash, plan_tasks, run_task
from terraloom.pipeline.world.regions import preset


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_byte_identical_world(tiny_dir: Path, tmp_path: Path) -> None:
    # tasks land on workers in a different order every run: not a single byte may change
    info = generate_world(tmp_path / "again", preset="tiny", seed=0, progress=False, workers=2)
    a, b = _files(tiny_dir), _files(info.root)
    assert a == b and len(a) > 500
    _, mismatch, errors = filecmp.cmpfiles(tiny_dir, info.root, [str(p) for p in a], shallow=False)
    assert not mismatch and not errors


def test_different_seeds_differ(tiny_dir: Path, tmp_path: Path) -> None:
    phase_a, _ = plan_tasks(1, preset("tiny"))
    cache = Path(tempfile.mkdtemp(dir=tmp_path))  # unused by DEM/GRD tasks
    for kind in ("dem", "grd"):
        run_task(
            1,
            "tiny",
            str(tmp_path),
            str(cache),
            next(t for t in phase_a if t.region == "parana" and t.kind == kind),
        )
    compared = 0
    for p in _files(tmp_path):
        if p.suffix == ".tif" and (tiny_dir / p).is_file():
            assert not filecmp.cmp(tmp_path / p, tiny_dir / p, shallow=False), p
            compared += 1
    assert compared > 10  # DEM tiles and GRD rasters


def test_cached_world_is_reused_and_atomic(tmp_path: Path) -> None:
    # a stand-in world: cached_world must not regenerate what is already complete
    key = tmp_path / f"v{GENERATOR_VERSION}-{code_hash()}-tiny-s7"
    key.mkdir()
    (key / "world.json").write_text("{}")
    assert cached_world("tiny", 7, cache_dir=tmp_path) == key
    assert not list(tmp_path.glob(".v*-tiny-s7.*")), "no temporary left behind"
    assert len(code_hash()) == 10 and code_hash() == code_hash()
    with pytest.raises(ValueError, match="unknown preset"):
        cached_world("huge", 0, cache_dir=tmp_path)


def test_load_world_rebuilds_the_generator(tiny_dir: Path, tiny: World) -> None:
    assert (
        tiny.seed == 0 and tiny.preset.name == "tiny" and tiny.catalog == tiny_dir / "catalog.json"
    )
    same = World.from_preset("tiny", 0)
    assert [r.bbox for r in same.regions] == [r.bbox for r in tiny.regions]
    alps = tiny.region("alps")
    assert (
        alps.utm_epsgs == (32632, 32633) and alps.start <= alps.s2_datetimes[0].date() <= alps.end
    )
    assert tiny.region("parana").frame_epsg == 32722
    assert len(tiny.acquisitions("S2", "alps")) == tiny.preset.n_s2
    doc = json.loads((tiny_dir / "world.json").read_text())
    doc["version"] = "0.0.0"
    bad = tiny_dir.parent / f"{tiny_dir.name}-stale.json"
    try:
        bad.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match="regenerate"):
            load_world(bad)
    finally:
        bad.unlink()
    with pytest.raises(FileNotFoundError):
        load_world(tiny_dir / "nope")


def test_generate_refuses_to_clobber(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        generate_world(tmp_path, preset="tiny", progress=False)
    with pytest.raises(FileExistsError, match="no world.json"):
        generate_world(tmp_path, preset="tiny", progress=False, overwrite=True)
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_cli_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--out", str(tmp_path), "--preset", "huge"],
        ["--out", str(tmp_path), "--seed", "-1"],
        ["--preset", "tiny"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    (tmp_path / "x.txt").write_text("")
    assert main(["world", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    p = add_world_parser(sub)
    args = p.parse_args(["--out", "w", "--preset", "demo", "--seed", "3"])
    assert (args.out, args.preset, args.seed) == ("w", "demo", 3)
