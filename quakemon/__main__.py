"""`python -m quakemon` is the `quakemon` command."""

import sys

from quakemon.cli import main

sys.exit(main())
