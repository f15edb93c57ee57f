"""``python -m terraloom.tokenize_jobs``: the ``terraloom-tokenize`` command line."""

from __future__ import annotations

import sys

from terraloom.tokenize_jobs.cli import main

sys.exit(main())
