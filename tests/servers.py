"""Real servers the tests talk to over loopback: moto's S3 HTTP server.

moto runs as its own process (``python -m moto.server``), so boto3 goes through real
HTTP, real multipart uploads and real error codes; nothing in boto3 is patched. The
process is started once per test run and stopped by its own PID at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

#: Fake credentials: moto accepts any, and boto3 must never look for real ones.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}

#: An opener that ignores proxy settings: the tests talk to loopback only.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

#: Hosts that must never be reached through a proxy.
LOOPBACK = "127.0.0.1,localhost,::1"

#: How long moto may take to answer its first request before the run gives up.
STARTUP_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_answering(endpoint: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            with _DIRECT.open(f"{endpoint}/moto-api/", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # any HTTP answer means the server is up
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"moto did not answer on {endpoint}: {log.read_text()[-2000:]}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def fake_aws() -> Iterator[None]:
    """Fake AWS credentials in this process's environment for the rest of the run.

    Every boto3 client the portal makes then signs with them and never looks for real
    credentials (no files, no instance metadata).
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_AWS_ENV.items():
            patch.setenv(name, value)
        # botocore honours HTTP(S)_PROXY: loopback must never go through one
        for name in ("NO_PROXY", "no_proxy"):
            patch.setenv(name, ",".join(filter(None, [os.environ.get(name), LOOPBACK])))
        yield


@pytest.fixture(scope="session")
def moto_server(fake_aws: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """moto's S3 server on a free loopback port; yields its endpoint URL."""
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **FAKE_AWS_ENV},
        )
    try:
        _wait_until_answering(endpoint, process, log)
        yield endpoint
    finally:
        _stop(process)


def s3_client(endpoint: str) -> Any:
    """A plain boto3 S3 client for ``endpoint`` (for setting up and inspecting buckets)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def s3_bucket(moto_server: str) -> Iterator[tuple[str, str]]:
    """A fresh, uniquely named bucket on the moto server; yields ``(endpoint, bucket)``."""
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    client = s3_client(moto_server)
    client.create_bucket(Bucket=bucket)
    try:
        yield moto_server, bucket
    finally:
        remove_bucket(client, bucket)


def remove_bucket(client: Any, bucket: str) -> None:
    """Empty and delete ``bucket`` (moto keeps everything in memory for the whole run)."""
    try:
        uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        for upload in uploads:
            client.abort_multipart_upload(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=item["Key"])
        client.delete_bucket(Bucket=bucket)
    except client.exceptions.NoSuchBucket:
        pass  # the test removed it itself
