"""``python -m terraloom.orchestration`` runs the main job (the same as ``terraloom-demo``)."""

import sys

from terraloom.orchestration.demo import main

sys.exit(main())
