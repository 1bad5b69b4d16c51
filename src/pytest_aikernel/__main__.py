"""``python -m pytest_aikernel`` is the ``aikernel`` command."""

import sys

from .cli import main

sys.exit(main())
