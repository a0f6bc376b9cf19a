"""stadv's sweep machinery: Ray Tune sweeps of the library's attacks, tracked in MLflow.

Layered so that imports run one way (import-linter checks it in CI):

* ``sweeps/*.py`` (scripts) -> :mod:`stadv_sweeps.plans` (what each sweep runs: the grid
  sweeps ``kappa_tau`` and ``ablation``, the defense sweep, the report command)
* -> :mod:`stadv_sweeps.engine` (the driver, Ray Tune glue, the trial function, MLflow
  tracking, reading runs back, tables, figures and reports)
* -> the library, :mod:`stadv` and :mod:`defenses` (which never import Ray, MLflow or this
  package).

Ray workers import this package by name (it is installed with the project), like any library.
"""

__all__: list[str] = []
