"""python -m sdopt.cli"""

import sys

from sdopt.cli import main

sys.exit(main())
