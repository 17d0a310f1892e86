"""`python -m interp.cli ...` (e.g. under torchrun: torchrun ... -m interp.cli -- patch ...)."""
import sys

from interp.cli import main

sys.exit(main())
