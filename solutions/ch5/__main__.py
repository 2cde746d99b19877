"""``python -m solutions.ch5 pretrain|data|sft|dpo|rl ...``: see :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
