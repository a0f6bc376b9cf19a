"""``python sweeps/ablation.py``: one implementation choice at a time at the paper's tau and
kappa.

``--smoke-test`` runs 3 tiny trials in seconds; ``--help`` lists every flag; the sweep itself
is :mod:`stadv_sweeps.plans.ablation`.
"""

import sys

from stadv_sweeps.plans.ablation import main

if __name__ == "__main__":
    sys.exit(main())
