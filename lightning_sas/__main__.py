"""``python -m lightning_sas``: the same command line as the ``lightning-sas`` script."""

from __future__ import annotations

import sys

from lightning_sas.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
