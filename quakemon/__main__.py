"""`python -m quakemon` is the `quakemon` command."""

import sys

from quakemon.cli.app import main

sys.exit(main())
