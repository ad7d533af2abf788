"""`python -m lumenlm` runs the CLI."""

import sys

from lumenlm.cli import main

sys.exit(main())
