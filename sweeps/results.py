"""``python sweeps/results.py``: a sweep's Markdown report (see :mod:`stadv_sweeps.plans.report_cli`)."""

import sys

from stadv_sweeps.plans.report_cli import main

if __name__ == "__main__":
    sys.exit(main())
