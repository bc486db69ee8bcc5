"""python -m sdopt: the sdopt command, for an environment whose scripts folder is not on PATH."""

import sys

from sdopt.cli import main

sys.exit(main())
