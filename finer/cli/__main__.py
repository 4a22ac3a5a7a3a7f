"""``python -m finer.cli``: the ``finer`` command."""

import sys

from finer.cli import main

sys.exit(main())
