"""`python -m lumenlm.cli` runs the CLI."""

import sys

from lumenlm.cli import main

sys.exit(main())
