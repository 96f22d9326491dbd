"""`python -m tfdgmm ...` is the `tfdgmm` command (see `tfdgmm.cli`)."""

import sys

from tfdgmm.cli import main

sys.exit(main())
