"""Publishing an exported directory: checks that it is safe to upload, then the Hugging Face Hub
push.

`check_publishable` refuses pickled files (torch `.bin`/`.pt`, `.pkl`: loading them runs code) and
anything holding a secret (a Hub or OpenAI token pattern, or the value of any environment variable
whose name says TOKEN/SECRET/KEY/PASSWORD). `push_to_hub` uploads exactly the files that passed,
using the token huggingface_hub finds itself (HF_TOKEN, or `hf auth login`): the token is never
passed around, written or printed by this module.
"""

import os
import re

from querit_jax import storage
from querit_jax.errors import PublishError

PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt", ".joblib")
_TOKEN_PATTERNS = (re.compile(rb"hf_[A-Za-z0-9]{30,}"), re.compile(rb"sk-[A-Za-z0-9_\-]{20,}"))
_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSWORD|API_KEY|ACCESS_KEY", re.IGNORECASE)


def export_files(out_dir: str) -> list[str]:
    """Every file under out_dir, as sorted relative POSIX paths."""
    return [rel.replace("\\", "/") for rel in storage.files(out_dir)]


def _env_secrets() -> list[bytes]:
    return [
        v.encode()
        for k, v in os.environ.items()
        if _SECRET_ENV.search(k) and len(v) >= 8 and v.lower() not in ("true", "false")
    ]


def _is_pickle(path: str) -> bool:
    with storage.open_read_raw(path) as f:
        head = f.read(2)
    # Protocol 2+ pickles start with PROTO (0x80) and the protocol number; torch.save is a zip of
    # pickles.
    if len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return True
    if head == b"PK":
        import zipfile

        try:
            with storage.open_read_raw(path) as f, zipfile.ZipFile(f) as z:
                return any(n.endswith(".pkl") for n in z.namelist())
        except zipfile.BadZipFile:
            return False
    return False


def check_publishable(out_dir: str) -> list[str]:
    """The files to upload. Raises PublishError naming the first unsafe file."""
    if not storage.isfile(storage.join(out_dir, "config.json")):
        raise PublishError(f"{out_dir} is not an exported model directory (no config.json).")
    secrets = _env_secrets()
    files = export_files(out_dir)
    for rel in files:
        path = storage.join(out_dir, rel)
        if rel.lower().endswith(PICKLE_SUFFIXES) or _is_pickle(path):
            raise PublishError(
                f"{path}: a pickle file (executes code when loaded); export safetensors only."
            )
        if _holds_secret(path, secrets):
            raise PublishError(f"{path} contains an access token or secret; remove it first.")
    return files


CHUNK = 16 << 20
OVERLAP = 4096  # longer than any token pattern or secret we look for


def _holds_secret(path: str, secrets: list[bytes]) -> bool:
    """Scans a file in chunks (weights shards are GBs: never read whole), overlapping so that a
    token cut by a chunk boundary is still found."""
    tail = b""
    with storage.open_read_raw(path) as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            data = tail + chunk
            if any(p.search(data) for p in _TOKEN_PATTERNS) or any(s in data for s in secrets):
                return True
            tail = data[-OVERLAP:]
    return False


def hub_token() -> str | None:
    """The token huggingface_hub would use (HF_TOKEN, or the one saved by `hf auth login`)."""
    from huggingface_hub import get_token

    return get_token()


def push_to_hub(out_dir: str, repo_id: str, private: bool = False) -> str:
    """Creates (if needed) the model repo and uploads the checked export files. Returns the URL.

    Only call with a token configured (see `hub_token`). Raises PublishError when the Hub refuses.
    """
    from huggingface_hub import HfApi

    files = check_publishable(out_dir)
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=storage.local_copy(out_dir),
            repo_type="model",
            allow_patterns=files,
            commit_message="Upload reranker exported with querit_jax",
        )
    except Exception as e:  # huggingface_hub raises HTTP, network and validation errors
        raise PublishError(
            f"pushing {out_dir} to {repo_id} failed: {type(e).__name__}: {e}"
        ) from None
    return getattr(info, "commit_url", None) or f"https://huggingface.co/{repo_id}"
