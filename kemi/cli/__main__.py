"""`python -m kemi.cli`: the `referee` command without its installed script."""

import sys

from kemi.cli import main

sys.exit(main())
