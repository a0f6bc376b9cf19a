"""The MLflow tags and artifact names by which the sweeps find their runs again."""

from __future__ import annotations

PARENT_TAG = "mlflow.parentRunId"
SWEEP_TAG = "stadv.sweep"
ROLE_TAG = "stadv.role"
TRIAL_KEY_TAG = "stadv.trial_key"
#: the parent run's artifact holding the resolved sweep (what ``--resume`` reads back)
STATE_FILE = "stadv_sweep.json"
