"""``python sweeps/kappa_tau.py``: stAdv over kappa x tau x init x pgtol for Models A, B, C
(see :mod:`stadv_sweeps.plans.kappa_tau`; ``--help`` lists every flag)."""

import sys

from stadv_sweeps.plans.kappa_tau import main

if __name__ == "__main__":
    sys.exit(main())
