"""``python -m model ...`` runs the ``terraloom-model`` CLI."""

from __future__ import annotations

import sys

from model.cli import main

sys.exit(main())
