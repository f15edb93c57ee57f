"""``terraloom-pipeline`` (pipeline/cli.py): build's config file and flags, the Croatia recipe
of docs/pipeline.md run as written, and verify/quicklook refusing what is not a corpus."""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import pytest

from terraloom.pipeline.cli import _config_from_args, build_parser, main
from terraloom.pipeline.hrefs import HrefPolicy
from terraloom.schemas.tables import read_table

REPO = Path(__file__).resolve().parents[2]
CROATIA = REPO.parent / "shared" / "real" / "s2l2a_croatia"
needs_real = pytest.mark.skipif(not CROATIA.is_dir(), reason=f"{CROATIA} not found")


def _recipe() -> list[list[str]]:
    """The commands of docs/pipeline.md's Croatia recipe, as a shell would split them."""
    text = (REPO / "docs" / "pipeline.md").read_text()
    section = text[text.index("### A real catalog: the Croatia recipe") :]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None
    lines = block.group(1).replace("\\\n", " ").splitlines()
    assert lines[0] == "R=../shared/real/s2l2a_croatia"  # the path the docs give, from the repo
    return [shlex.split(line.replace("$R", str(CROATIA))) for line in lines[1:] if line.strip()]


@pytest.fixture(scope="module")
def croatia_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Croatia recipe run from a fresh directory, through ``main`` as the console script."""
    if not CROATIA.is_dir():
        pytest.skip(f"{CROATIA} not found")
    work = tmp_path_factory.mktemp("croatia")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for argv in _recipe():
            assert argv[0] == "terraloom-pipeline"
            assert main([*argv[1:], "--no-progress"]) == 0, argv
    finally:
        os.chdir(cwd)
    return work / "corpus"


@needs_real
def test_the_croatia_recipe_runs_as_written_and_accepts_its_samples(
    croatia_corpus: Path,
) -> None:
    index = read_table("index", croatia_corpus / "index.parquet")
    rejects = read_table("rejects", croatia_corpus / "rejects.parquet")
    assert index.num_rows == 4 and rejects.num_rows == 0
    assert main(["verify", str(croatia_corpus), "--no-progress"]) == 0


def test_every_build_config_field_is_reachable_without_python(tmp_path: Path) -> None:
    cfg_file = tmp_path / "build.yaml"
    cfg_file.write_text(
        "modalities: [S2L2A, NDVI]\n"
        "required: [S2L2A]\n"
        "band_subset: {S2L2A: [B02, B03, B04, B08]}\n"
        "io_threads: 3\n"
        "http_timeout_s: 7\n"
        "gdal_options: {GDAL_HTTP_PROXY: '127.0.0.1:9'}\n"
        "href_policy: {hosts: [LocalHost]}\n"
        "gcp_tps: false\n"
    )
    base = ["build", "--plan", "p", "--out", "o", "--config", str(cfg_file)]
    cfg = _config_from_args(build_parser().parse_args([*base, "--set", "read_slack=3.5"]))
    assert cfg.modalities == ("S2L2A", "NDVI") and cfg.required == ("S2L2A",)
    assert cfg.band_subset == (("S2L2A", ("B02", "B03", "B04", "B08")),)
    assert (cfg.io_threads, cfg.http_timeout_s, cfg.read_slack, cfg.gcp_tps) == (3, 7, 3.5, False)
    assert cfg.gdal_options == (("GDAL_HTTP_PROXY", "127.0.0.1:9"),)
    assert cfg.href_policy == HrefPolicy(hosts=("localhost",))
    # the flags are shortcuts that win over the file and --set
    flags = ["--bands", "S2L1C=B01,B10", "--io-threads", "5", "--http-timeout", "9"]
    flags += ["--http-max-retry", "0", "--gdal-option", "GDAL_CACHEMAX=64", "--required", "NDVI"]
    cfg = _config_from_args(build_parser().parse_args([*base, "--set", "io_threads=4", *flags]))
    assert cfg.band_subset == (("S2L1C", ("B01", "B10")),)
    assert (cfg.io_threads, cfg.http_timeout_s, cfg.http_max_retry) == (5, 9, 0)
    assert cfg.gdal_options == (("GDAL_CACHEMAX", "64"),) and cfg.required == ("NDVI",)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "io_thread=2"], "unknown keys ['io_thread']"),
        (["--bands", "S2L2A=B99"], "S2L2A has no bands ['B99']"),
        (["--bands", "S2L2A"], "bad --bands 'S2L2A'"),
        (["--modalities", "S9"], "S9"),
        (["--set", "io_threads=0"], "io_threads must be >= 1"),
    ],
)
def test_bad_build_config_is_one_line_exit_2_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = tmp_path / "corpus"
    assert main(["build", "--plan", str(tmp_path / "p.parquet"), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def _token_store(root: Path) -> Path:
    from terraloom.schemas.layouts import create_token_store

    create_token_store(root / "train.zarr", n_samples=2, n_crops=1, crop_px=32, shard_samples=2)
    return root


@pytest.mark.parametrize("command", ["verify", "quicklook"])
def test_verify_and_quicklook_refuse_a_token_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    tokens = _token_store(tmp_path / "tokens")
    out = tmp_path / "png"
    argv = [command, str(tokens), *(["--out", str(out)] if command == "quicklook" else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tokens} is a token store, not a corpus" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@needs_real
def test_quicklook_negative_limit_is_bad_input(
    croatia_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "png"
    assert main(["quicklook", str(croatia_corpus), "--out", str(out), "--limit", "-1"]) == 2
    assert "--limit must be >= 0, got -1" in capsys.readouterr().err
    assert not out.exists()
    assert main(["quicklook", str(croatia_corpus), "--out", str(out), "--limit", "1"]) == 0
    assert len(list(out.rglob("*.png"))) == 1


def test_render_corpus_rejects_a_negative_limit(tmp_path: Path) -> None:
    from terraloom.pipeline.quicklook import render_corpus

    with pytest.raises(ValueError, match="limit must be >= 0"):
        render_corpus(tmp_path, tmp_path / "png", limit=-1)


BAD_LOCATIONS = ("s3:/typo", "ftp://x", "nosuchscheme://x")


def _commands(bad: str, good: Path) -> list[list[str]]:
    """Every pipeline command with ``bad`` in each of its location arguments in turn (the
    other locations real or at least well-formed)."""
    plan, corpus = str(good / "plan.parquet"), str(good / "corpus")
    return [
        ["plan", "--source", f"world:{good / 'world'}", "--out", bad],
        ["build", "--plan", bad, "--out", corpus],
        ["build", "--plan", plan, "--out", bad],
        [
            "build",
            "--plan",
            plan,
            "--out",
            corpus,
            "--engine",
            "dask",
            "--scheduler",
            "tcp://127.0.0.1:1",
            "--storage-option",
            "anon=true",
            "--out",
            bad,
        ],
        ["verify", bad],
        ["quicklook", bad, "--out", str(good / "q")],
        ["quicklook", corpus, "--out", bad],
        ["world", "--out", bad],
    ]


@pytest.mark.parametrize("bad", BAD_LOCATIONS)
def test_every_command_refuses_a_malformed_location_before_writing_anything(
    bad: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 19: ``s3:/typo``, ``ftp://x``, ``nosuchscheme://x`` as any location of any
    pipeline command: one line naming it, exit 2, and nothing written anywhere (in
    particular no local folder named ``s3:`` in the working directory)."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    for argv in _commands(bad, tmp_path / "elsewhere"):
        assert main([*argv, "--no-progress"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
        assert bad in err and "bad location" in err, (argv, err)
        assert list(work.iterdir()) == [] and not (tmp_path / "elsewhere").exists(), argv
