"""``python -m pipeline ...`` = ``terraloom-pipeline ...``."""

from __future__ import annotations

from pipeline.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
