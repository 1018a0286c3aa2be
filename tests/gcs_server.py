"""gcp-storage-emulator with the download headers Orbax's OCDBT checkpoints need.

The emulator answers a media download without `x-goog-generation` and ignores the generation
preconditions of reads. tensorstore (Orbax's array store) re-reads an OCDBT manifest with
`ifGenerationNotMatch=<generation it wrote>` whenever a save commits in several rounds (a train
state of ~100 arrays does) and then fails with "Malformed StorageGeneration". Real Cloud Storage
sends the header and answers 304/412; this wrapper adds both to the emulator's download handler.

    python -m tests.gcs_server start --host=127.0.0.1 --port=PORT --no-store-on-disk
    --default-bucket=B

takes the emulator's own arguments. `serving()` runs one for a test and points every client at it.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http import HTTPStatus

BUCKET = "querit-test"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_VARIABLES = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING")


def _patch_download() -> None:
    """Wraps the emulator's download handler (before its server module builds its routes)."""
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    original = objects.download

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
        except NotFound:
            return original(request, response, storage, *args, **kwargs)
        generation = str(obj["generation"])
        if generation in request.query.get("ifGenerationNotMatch", []):
            response.status = HTTPStatus.NOT_MODIFIED
            response["x-goog-generation"] = generation
            return None
        match = request.query.get("ifGenerationMatch")
        if match and match[0] != generation:
            response.status = HTTPStatus.PRECONDITION_FAILED
            return None
        response["x-goog-generation"] = generation
        response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
        return original(request, response, storage, *args, **kwargs)

    objects.download = download


def main() -> None:
    _patch_download()
    from gcp_storage_emulator.__main__ import main as emulator_main

    emulator_main(sys.argv[1:])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving() -> Iterator[str]:
    """Runs a patched emulator and points gcsfs, tensorstore and later subprocesses at it (the
    previous settings come back afterwards). Yields the bucket URL, gs://querit-test."""
    import gcsfs

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.gcs_server",
            "start",
            "--host=127.0.0.1",
            f"--port={port}",
            "--no-store-on-disk",
            f"--default-bucket={BUCKET}",
        ],
        cwd=_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    previous = {name: os.environ.get(name) for name in _VARIABLES}
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError("the patched GCS emulator did not start") from None
                time.sleep(0.1)
        url = f"http://127.0.0.1:{port}"
        os.environ.update(
            STORAGE_EMULATOR_HOST=url,
            TENSORSTORE_GCS_HTTP_URL=url,
            GOOGLE_AUTH_TOKEN_FOR_TESTING="t",
        )
        gcsfs.GCSFileSystem.clear_instance_cache()  # instances remember their endpoint
        yield f"gs://{BUCKET}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        gcsfs.GCSFileSystem.clear_instance_cache()


if __name__ == "__main__":
    main()
