"""``python -m terraloom.model ...`` runs the ``terraloom-model`` CLI."""

from __future__ import annotations

import sys

from terraloom.model.cli import main

sys.exit(main())
