"""``python -m seedx_agent.cli``: the ``seedx`` command without the console script."""

import sys

from . import main

sys.exit(main())
