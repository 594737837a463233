"""`python -m bitc` is the `bitc` command."""

import sys

from bitc.cli import main

sys.exit(main())
