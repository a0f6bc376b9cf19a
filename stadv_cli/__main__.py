"""``python -m stadv_cli``: the ``stadv`` command."""

import sys

from stadv_cli.main import main

sys.exit(main())
