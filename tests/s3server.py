"""A real S3 API for tests: moto's server in a child process on loopback, with a private bucket.

`s3_server()` starts `python -m moto.server` on 127.0.0.1 and a free port, waits until it
answers, creates a private bucket (no public ACL, no bucket policy) and yields an `S3Server`
describing it. The server is killed when the block ends, however it ends; on Linux it also dies
with the test process, so an interrupted run leaves nothing listening.

Nothing reaches beyond loopback: the server binds 127.0.0.1, gets a minimal environment (no
proxies, no cloud credentials) and never needs the network; the clients below ignore proxies.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
from botocore.config import Config

from tests.helpers import free_port

ACCESS_KEY = "test"
SECRET_KEY = "test"
REGION = "us-east-1"
URL_SECONDS = 300

# Run in the child: ask the kernel to kill it when its parent dies (a killed or crashed test
# run), then hand over to moto's own entry point.
_BOOTSTRAP = """
import ctypes, os, signal, sys
if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != int(sys.argv[1]):
        sys.exit(1)  # the parent is already gone
from moto.server import main
main(sys.argv[2:])
"""


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def client(self) -> Any:
        """A boto3 S3 client with the test credentials, not going through any proxy."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(proxies={}),
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object name in the bucket under `prefix`."""
        pages = self.client().get_paginator("list_objects_v2")
        found = pages.paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in found for item in page.get("Contents", []))

    def empty(self) -> None:
        """Delete every object, so each test starts with an empty bucket."""
        api = self.client()
        for name in self.keys():
            api.delete_object(Bucket=self.bucket, Key=name)

    def plain_url(self, name: str) -> str:
        """The object's address without any signature (path style, as the endpoint is an IP)."""
        return f"{self.endpoint}/{self.bucket}/{name}"

    def storage_settings(self) -> dict[str, Any]:
        """What omniweb/settings.py builds from OMNIWEB_S3_*, for `override_settings`."""
        from django.conf import settings

        return {
            "STORAGES": {
                **settings.STORAGES,
                "default": {
                    "BACKEND": "storages.backends.s3.S3Storage",
                    "OPTIONS": {
                        "bucket_name": self.bucket,
                        "endpoint_url": self.endpoint,
                        "access_key": ACCESS_KEY,
                        "secret_key": SECRET_KEY,
                        "region_name": REGION,
                        "default_acl": None,
                        "querystring_auth": True,
                        "querystring_expire": URL_SECONDS,
                        "file_overwrite": False,
                        "signature_version": "s3v4",
                    },
                },
            },
            "S3_BUCKET": self.bucket,
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_URL_SECONDS": URL_SECONDS,
        }

    def environment(self) -> dict[str, str]:
        """The same storage for a child process (a worker), through its environment."""
        return {
            "OMNIWEB_S3_BUCKET": self.bucket,
            "OMNIWEB_S3_ENDPOINT_URL": self.endpoint,
            "OMNIWEB_S3_ACCESS_KEY_ID": ACCESS_KEY,
            "OMNIWEB_S3_SECRET_ACCESS_KEY": SECRET_KEY,
            "OMNIWEB_S3_REGION": REGION,
            "OMNIWEB_S3_URL_SECONDS": str(URL_SECONDS),
        }


def _answers(endpoint: str) -> bool:
    try:
        httpx.get(endpoint, timeout=1, trust_env=False)
    except httpx.TransportError:
        return False
    return True


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        # Its own process group: nothing it may have started survives it.
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _start(seconds: float) -> tuple[subprocess.Popen, str]:
    environment = {"PATH": os.environ.get("PATH", ""), "LANG": "C.UTF-8", "NO_PROXY": "*"}
    for _attempt in range(3):
        port = free_port()  # another process may take it before moto binds: then try again
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BOOTSTRAP,
                str(os.getpid()),
                "-H",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + seconds
        try:
            while process.poll() is None and time.monotonic() < deadline:
                if _answers(endpoint):
                    return process, endpoint
                time.sleep(0.1)
        except BaseException:
            _stop(process)
            raise
        _stop(process)
    raise RuntimeError(f"moto's S3 server did not start within {seconds:g} seconds")


@contextmanager
def s3_server(bucket: str = "omniweb-media", seconds: float = 30) -> Iterator[S3Server]:
    process, endpoint = _start(seconds)
    try:
        server = S3Server(endpoint=endpoint, bucket=bucket)
        server.client().create_bucket(Bucket=bucket, ACL="private")
        yield server
    finally:
        _stop(process)
