"""``python sweeps/defense_sweep.py``: attacks x defenses x models.

``--smoke-test`` runs model B with tiny training and 2 images; ``--help`` lists every flag;
the sweep itself is :mod:`stadv_sweeps.plans.defense`.
"""

import sys

from stadv_sweeps.plans.defense import main

if __name__ == "__main__":
    sys.exit(main())
