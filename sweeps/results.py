"""``python sweeps/results.py``: a sweep's Markdown (and HTML) report from MLflow.

``--smoke-test`` first runs kappa_tau's smoke sweep, then reports it; ``--help`` lists every
flag; the command itself is :mod:`stadv_sweeps.plans.report_cli`.
"""

import sys

from stadv_sweeps.plans.report_cli import main

if __name__ == "__main__":
    sys.exit(main())
