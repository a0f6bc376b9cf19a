"""Create MLflow's sweep user (idempotent): run by the ``mlflow-init`` service.

Logs in to ``MLFLOW_TRACKING_URI`` as the admin (``MLFLOW_ADMIN_USERNAME``, the password in the
file ``MLFLOW_ADMIN_PASSWORD_FILE``) and creates the user ``MLFLOW_SWEEP_USERNAME`` with the
password in the file ``MLFLOW_SWEEP_PASSWORD_FILE``, or sets that password if the user exists.
The sweep user is no admin: with the server's ``default_permission = READ`` it reads every
experiment and manages those it creates. Waits up to two minutes for the server to answer.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path


def _secret(var: str) -> str:
    path = Path(os.environ[var])
    value = path.read_text().strip()
    if not value:
        raise SystemExit(f"mlflow-init: {path} is empty: fill it in .env")
    return value


def main() -> int:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(uri + "/health", timeout=5):
                break
        except OSError as err:
            if time.monotonic() > deadline:
                print(f"mlflow-init: {uri} does not answer: {err}", file=sys.stderr)
                return 1
            time.sleep(2)
    # MLflow's client reads the credentials from the environment: the admin's, here only.
    os.environ["MLFLOW_TRACKING_USERNAME"] = os.environ.get("MLFLOW_ADMIN_USERNAME", "admin")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = _secret("MLFLOW_ADMIN_PASSWORD_FILE")
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    client = AuthServiceClient(uri)
    user = os.environ.get("MLFLOW_SWEEP_USERNAME", "stadv")
    password = _secret("MLFLOW_SWEEP_PASSWORD_FILE")
    try:
        client.get_user(user)
    except MlflowException:
        client.create_user(user, password)
        print(f"mlflow-init: created user {user}")
    else:
        client.update_user_password(user, password)
        print(f"mlflow-init: user {user} exists; password set from .env")
    return 0


if __name__ == "__main__":
    sys.exit(main())
