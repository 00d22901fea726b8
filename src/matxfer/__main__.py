"""``python -m matxfer``: the command-line interface."""

import sys

from matxfer.cli import main

if __name__ == "__main__":
    sys.exit(main())
