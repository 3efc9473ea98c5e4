"""``python -m easytune.cli`` (used with ``torchrun -m easytune.cli finetune ...``)."""

import sys

from easytune.cli import main

sys.exit(main())
