"""`python -m viva ...`: the same as the `viva` command."""

import sys

from viva.cli import main

if __name__ == "__main__":
    sys.exit(main())
