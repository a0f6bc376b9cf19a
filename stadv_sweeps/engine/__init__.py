"""The shared sweep engine: driver, Ray Tune glue, trials, MLflow tracking and reports.

Modules, each with one job: :mod:`~stadv_sweeps.engine.errors` (the user-facing errors),
:mod:`~stadv_sweeps.engine.spec` (trials as :class:`~stadv_sweeps.engine.spec.Point` s,
their keys and checks, config files), :mod:`~stadv_sweeps.engine.cli` (the "where it runs"
flags), :mod:`~stadv_sweeps.engine.bundles` and :mod:`~stadv_sweeps.engine.prepare` (models
and data for the trials), :mod:`~stadv_sweeps.engine.tags`, :mod:`~stadv_sweeps.engine.tracking`
(writing MLflow), :mod:`~stadv_sweeps.engine.runs` (reading it back),
:mod:`~stadv_sweeps.engine.tables`, :mod:`~stadv_sweeps.engine.figures`,
:mod:`~stadv_sweeps.engine.report`, :mod:`~stadv_sweeps.engine.trial` (one Tune trial),
:mod:`~stadv_sweeps.engine.tuning` (Ray and Tune) and :mod:`~stadv_sweeps.engine.runner`
(the driver and the :class:`~stadv_sweeps.engine.runner.SweepPlan` protocol).
"""
