"""``python sweeps/kappa_tau.py``: stAdv over kappa x tau x init x pgtol for Models A, B, C.

``--smoke-test`` runs 4 tiny trials in seconds; ``--help`` lists every flag; the sweep itself
is :mod:`stadv_sweeps.plans.kappa_tau`.
"""

import sys

from stadv_sweeps.plans.kappa_tau import main

if __name__ == "__main__":
    sys.exit(main())
