"""``python -m terraloom.pipeline ...`` = ``terraloom-pipeline ...``."""

from __future__ import annotations

from terraloom.pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
