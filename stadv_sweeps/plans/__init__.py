"""The sweeps themselves: what each one runs, built on :mod:`stadv_sweeps.engine`.

* :mod:`~stadv_sweeps.plans.grid`: option-grid sweeps of one attack (``kappa_tau``,
  ``ablation``: :mod:`~stadv_sweeps.plans.kappa_tau`, :mod:`~stadv_sweeps.plans.ablation`);
* :mod:`~stadv_sweeps.plans.defense`: attacks x defenses x models;
* :mod:`~stadv_sweeps.plans.report_cli`: the report command (``sweeps/results.py``).
"""
