"""`python -m invokeai_ti` runs the same entry point as the `invokeai-ti` console script."""

import sys

from invokeai_ti.front.cli import main

sys.exit(main())
