"""Races of real processes for the commit and lease tests.

Starting a process that imports terraloom (and s3fs, for the S3 races) costs seconds of CPU
on a loaded machine, and most of an S3 race test's time was that, paid again for every race.
:func:`race` starts the processes once, waits until each says it has imported what it needs
(no fixed sleep that is too short under load and too long otherwise), then runs the rounds
one after the other: each round's statement runs in every process at once, when its start
file appears, and prints one line. No process exits before every process has printed its
last line, so a winner stays alive while the others try (a local lease of a dead pid is
taken over at once).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_PROGRAM = """
import os, sys, time
sys.path.insert(0, {root!r})
{setup}
def wait(name):
    deadline = time.time() + 120
    while not os.path.exists(name) and time.time() < deadline:
        time.sleep(0.002)
print("ready", flush=True)
for i, code in enumerate({rounds!r}):
    wait({go!r} + str(i))
    exec(code)
    sys.stdout.flush()
wait({go!r} + str(len({rounds!r})))
"""


def race(
    setup: str, rounds: Sequence[str], tmp: Path, *, n: int = 4, timeout: float = 120
) -> tuple[list[int], list[list[str]]]:
    """Run ``setup`` (imports) in ``n`` processes, then each of ``rounds`` (a statement that
    prints one line) in all of them at once; return the pids and each round's lines."""
    go = str(tmp / "go")
    code = _PROGRAM.format(root=str(ROOT), setup=setup, rounds=list(rounds), go=go)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(n)
    ]
    try:
        ready = [p.stdout.readline().strip() for p in procs]  # type: ignore[union-attr]
        assert ready == ["ready"] * n, ready
        lines = []
        for i in range(len(rounds)):
            Path(f"{go}{i}").touch()
            lines.append([p.stdout.readline().strip() for p in procs])  # type: ignore[union-attr]
        Path(f"{go}{len(rounds)}").touch()
        for p in procs:
            p.communicate(timeout=timeout)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs), lines
    return [p.pid for p in procs], lines
