"""``python -m gradsift`` (and ``torchrun -m gradsift``): the command line."""

import sys

from gradsift.cli import main

sys.exit(main())
