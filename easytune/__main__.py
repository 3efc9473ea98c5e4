"""``python -m easytune ...``: the ``easytune`` command."""

import sys

from easytune.cli import main

sys.exit(main())
