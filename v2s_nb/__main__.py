"""``python -m v2s_nb ...``: the ``v2s-nb`` command (:func:`v2s_nb.cli.main`), for environments without the script
on PATH (a notebook's ``!python -m v2s_nb reenact ...``)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
