"""`python -m zflood` is the `zflood` command."""

import sys

from .cli import main

sys.exit(main())
