"""Create the object store's buckets once (idempotent): run by the ``s3-init`` service.

Reads ``S3_ENDPOINT_URL`` and ``S3_BUCKETS`` (space-separated names) from the environment, and
the keys from the files ``S3_ACCESS_KEY_FILE`` and ``S3_SECRET_KEY_FILE`` name (Docker
secrets), else from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``; waits up to two minutes
for the endpoint to answer.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


def _key(file_var: str, env_var: str) -> str | None:
    path = os.environ.get(file_var)
    if path:
        value = Path(path).read_text().strip()
        if not value:
            raise SystemExit(f"s3-init: {path} is empty: fill in the keys in .env")
        return value
    return os.environ.get(env_var)


def main() -> int:
    endpoint = os.environ["S3_ENDPOINT_URL"]
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=_key("S3_ACCESS_KEY_FILE", "AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=_key("S3_SECRET_KEY_FILE", "AWS_SECRET_ACCESS_KEY"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            break
        except (BotoCoreError, ClientError) as err:
            if time.monotonic() > deadline:
                print(f"s3-init: {endpoint} does not answer: {err}", file=sys.stderr)
                return 1
            time.sleep(2)
    for bucket in os.environ.get("S3_BUCKETS", "mlflow").split():
        if bucket in existing:
            print(f"s3-init: bucket {bucket} exists")
        else:
            s3.create_bucket(Bucket=bucket)
            print(f"s3-init: created bucket {bucket}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
