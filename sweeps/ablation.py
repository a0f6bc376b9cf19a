"""``python sweeps/ablation.py``: one implementation choice at a time at the paper's tau and
kappa (see :mod:`stadv_sweeps.plans.ablation`; ``--help`` lists every flag)."""

import sys

from stadv_sweeps.plans.ablation import main

if __name__ == "__main__":
    sys.exit(main())
