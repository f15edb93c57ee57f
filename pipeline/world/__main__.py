"""``python -m terraloom.pipeline.world --out DIR --preset tiny --seed 0`` (same as ``terraloom-pipeline world``)."""

from __future__ import annotations

import sys

from terraloom.pipeline.world.cli import main

raise SystemExit(main(sys.argv[1:]))
