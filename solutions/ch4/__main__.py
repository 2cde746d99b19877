"""``python -m solutions.ch4 train|sample ...``: see :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
