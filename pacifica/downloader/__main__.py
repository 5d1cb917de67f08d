"""``python -m pacifica.downloader``: the ``pacifica-downloader`` command (see :mod:`.cli`)."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
