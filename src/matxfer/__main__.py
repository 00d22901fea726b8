"""``python -m matxfer``: the same as the ``matxfer`` command."""

import sys

from matxfer.cli import main

if __name__ == "__main__":
    sys.exit(main())
