import sys

from terraloom.schemas.cli import main

sys.exit(main())
