"""``bench/gpu.sh``: its dry run works without a GPU, and every flag it passes exists.

The GPU machine is lent rarely and briefly, so a typo in the script must be caught here, not
there: each step's command line is checked against the script's own ``--help``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_script_dry_run_lists_every_check_and_its_flags_exist() -> None:
    run = subprocess.run(
        ["bash", "bench/gpu.sh", "--dry-run"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    steps = dict(re.findall(r"^\[(\w+)\] timeout \d+s: (.*)$", run.stdout, flags=re.M))
    assert set(steps) == {"train_step", "encode", "tokenizers", "gpu_tests"}
    total = sum(int(t) for t in re.findall(r"timeout (\d+)s", run.stdout))
    assert total <= 450  # under the 8 minutes the issue allows, with set-up time to spare
    for name in ("train_step", "encode", "tokenizers"):
        argv = steps[name].split()
        script = next(a for a in argv if a.startswith("bench/"))
        helptext = subprocess.run(
            [sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True
        )
        assert helptext.returncode == 0, (script, helptext.stderr[-500:])
        for flag in (a for a in argv if a.startswith("--")):
            assert flag in helptext.stdout, (script, flag)
    assert "-m gpu" in steps["gpu_tests"]


def test_gpu_script_refuses_unknown_options() -> None:
    run = subprocess.run(
        ["bash", "bench/gpu.sh", "--bogus"], cwd=ROOT, capture_output=True, text=True
    )
    assert run.returncode == 2 and "usage" in run.stderr
