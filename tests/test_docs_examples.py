"""Every ```bash / ```python example of README.md and docs/*.md runs as written (issue 17).

How a block is run is said in the doc itself, by HTML comments (invisible when rendered) on
the lines right above its fence:

- ``<!-- doc-test: skip: REASON -->``: not run; the reason (network, GPU, hours of CPU, a
  cluster, a synopsis with placeholders) is required and stays in the doc for readers.
- ``<!-- doc-test: replace: OLD => NEW -->`` (any number): text substituted before running,
  to point at the shared tiny corpus (``_shared/...``) or shrink a budget.

Blocks of one file run in order, in one fresh directory per file, so a block can use what an
earlier one of the same page wrote. Every directory holds ``_shared``: the embedded ``tiny``
world (``world/``), its plan (``plan.parquet``), a corpus built from it (``corpus/``) and an
empty token store template (``tokens/train.zarr``), made once per module. Bash blocks run
with ``bash -e`` and the venv's ``bin`` first on PATH; python blocks with the venv's python.
Fences of other languages (yaml, json, plain text: synopses, listings) are not examples.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGS = ("bash", "sh", "python")
MARK = re.compile(r"^\s*<!--\s*doc-test:\s*(skip|replace):\s*(.*?)\s*-->\s*$")
BLOCK_TIMEOUT_S = 300


@dataclass
class Block:
    path: Path
    line: int
    lang: str
    code: str
    skip: str | None = None
    replace: list[tuple[str, str]] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def doc_blocks(path: Path) -> list[Block]:
    """The fenced runnable blocks of a markdown file with their doc-test markers."""
    lines = path.read_text().split("\n")
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = re.match(r"^\s*```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        lang = m.group(1)
        if lang in RUN_LANGS:
            b = Block(path, i + 1, lang, "\n".join(lines[i + 1 : j]) + "\n")
            k = i - 1
            while k >= 0 and MARK.match(lines[k]):
                kind, arg = MARK.match(lines[k]).groups()  # type: ignore[union-attr]
                if kind == "skip":
                    b.skip = arg
                else:
                    old, sep, new = arg.partition(" => ")
                    assert sep, f"{path.name}:{k + 1}: replace needs 'OLD => NEW'"
                    b.replace.append((old, new))
                k -= 1
            out.append(b)
        i = j + 1
    return out


def test_every_example_runs_or_says_why_not() -> None:
    """A skipped block carries its reason; a replacement must change the block."""
    blocks = [b for p in DOC_FILES for b in doc_blocks(p)]
    assert len(blocks) > 20
    for b in blocks:
        if b.skip is not None:
            assert len(b.skip) >= 10, f"{b.where}: a skipped block needs its reason"
        for old, _ in b.replace:
            assert old in b.code, f"{b.where}: replace {old!r} does not occur in the block"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world, its plan, a corpus built from it and a token store template."""
    from terraloom.pipeline.world.generate import cached_world
    from terraloom.schemas.layouts import create_token_store

    d = tmp_path_factory.mktemp("docs-shared")
    shutil.copytree(cached_world("tiny", 0), d / "world")
    bin_ = Path(sys.executable).parent
    for cmd in (
        [bin_ / "terraloom-pipeline", "plan", "--source", "world:world/", "--out", "plan.parquet"],
        [
            bin_ / "terraloom-pipeline",
            "build",
            "--plan",
            "plan.parquet",
            "--out",
            "corpus/",
            "--no-progress",
        ],
    ):
        r = subprocess.run(
            [str(c) for c in cmd], cwd=d, capture_output=True, text=True, timeout=600
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    create_token_store(d / "tokens" / "train.zarr", n_samples=4, n_crops=1, crop_px=64)
    return d


def _run(block: Block, cwd: Path, groups: list[int]) -> tuple[int, str]:
    """Run a block; output goes to a file (a server a block starts in the background
    would hold a pipe open), in its own process group, which the caller ends."""
    code = block.code
    for old, new in block.replace:
        code = code.replace(old, new)
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["MPLBACKEND"] = "Agg"
    if block.lang == "python":
        script = cwd / "_doc_block.py"
        script.write_text(code)
        cmd = [sys.executable, str(script)]
    else:
        cmd = ["bash", "-e", "-o", "pipefail", "-c", code]
    log = cwd / "_doc_block.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        groups.append(proc.pid)
        try:
            rc = proc.wait(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            rc = -1
    return rc, log.read_text()[-6000:]


def _end_groups(groups: list[int]) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)


@pytest.mark.parametrize(
    "doc",
    [p for p in DOC_FILES if any(b.skip is None for b in doc_blocks(p))],
    ids=lambda p: p.name,
)
def test_doc_examples_run_as_written(doc: Path, shared: Path, tmp_path: Path) -> None:
    (tmp_path / "_shared").symlink_to(shared, target_is_directory=True)
    groups: list[int] = []
    try:
        for block in doc_blocks(doc):
            if block.skip is not None:
                continue
            rc, output = _run(block, tmp_path, groups)
            assert rc == 0, f"{block.where} ({block.lang}) failed with exit {rc}:\n{output}"
    finally:
        _end_groups(groups)
