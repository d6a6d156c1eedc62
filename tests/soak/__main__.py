"""``python -m tests.soak --duration 600``: run the fault soak and print its summary."""

import sys

from tests.soak.soak import main

sys.exit(main())
