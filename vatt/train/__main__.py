"""`python -m vatt.train ...` is `python -m vatt.train.pretrain ...` (the RayJob entrypoint)."""

import sys

from vatt.train.pretrain import main

sys.exit(main())
