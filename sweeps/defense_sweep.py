"""``python sweeps/defense_sweep.py``: attacks x defenses x models (see
:mod:`stadv_sweeps.plans.defense`; ``--help`` lists every flag)."""

import sys

from stadv_sweeps.plans.defense import main

if __name__ == "__main__":
    sys.exit(main())
