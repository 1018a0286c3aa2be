"""A Cloud Storage emulator on 127.0.0.1 for tests (gcp-storage-emulator, in memory).

`start()` launches it once per test session on a free port and points every client at it with the
standard variables (google-cloud-storage and gcsfs: STORAGE_EMULATOR_HOST; tensorstore, which Orbax
uses for arrays: TENSORSTORE_GCS_HTTP_URL and GOOGLE_AUTH_TOKEN_FOR_TESTING). Subprocesses started
afterwards inherit them. Recipe: ../shared/notes/libraries.md section 12.
"""

import atexit
import logging
import os
import socket
import subprocess
import sys
import time

BUCKET = "querit-test"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_server = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start() -> str:
    """Starts the emulator (once) and returns the bucket's URL, gs://querit-test."""
    if not _server:
        port = _free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.gcs_server",  # the emulator with the generation headers Orbax's OCDBT needs
                "start",
                "--host=127.0.0.1",
                f"--port={port}",
                "--no-store-on-disk",
                f"--default-bucket={BUCKET}",
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        atexit.register(proc.terminate)
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the GCS emulator did not start") from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        os.environ["STORAGE_EMULATOR_HOST"] = url
        os.environ["TENSORSTORE_GCS_HTTP_URL"] = url
        os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] = "test-token"
        # Without a metadata server google.auth warns on every client; the emulator needs no auth.
        logging.getLogger("google.auth._default").setLevel(logging.ERROR)
        _server.update(proc=proc, url=url)
    return f"gs://{BUCKET}"
