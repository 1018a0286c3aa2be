"""Every location may be local or gs://: the storage layer on both, against a GCS emulator on
127.0.0.1, and the model formats that go through it (checkpoints, exports, Hub ids)."""

import ast
import json
import os
import uuid

import jax
import numpy as np
import pytest

from querit_jax import storage
from querit_jax.errors import CheckpointError, DataFormatError
from querit_jax.loading import load_model
from querit_jax.models.checkpoint import is_model_checkpoint, save_model
from tests import gcs
from tests.conftest import make_hf_qwen3
from tests.helpers import ROOT


@pytest.fixture(scope="module")
def bucket():
    return gcs.start()


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path, bucket):
    if request.param == "local":
        return str(tmp_path / "root")
    return f"{bucket}/{uuid.uuid4().hex[:8]}"


def test_files_read_write_list_and_delete(root):
    storage.write_text(storage.join(root, "a.txt"), "héllo")
    storage.write_bytes(storage.join(root, "sub", "b.bin"), b"\x00\x01")
    with storage.atomic_writer(storage.join(root, "sub", "c.jsonl")) as f:
        f.write('{"x": 1}\n')
    assert storage.read_text(storage.join(root, "a.txt")) == "héllo"
    assert storage.read_bytes(storage.join(root, "sub", "b.bin")) == b"\x00\x01"
    assert storage.listdir(root) == ["a.txt", "sub"]
    assert storage.files(root) == ["a.txt", "sub/b.bin", "sub/c.jsonl"]
    assert storage.isdir(storage.join(root, "sub")) and storage.isfile(storage.join(root, "a.txt"))
    assert storage.size(storage.join(root, "sub", "b.bin")) == 2
    assert storage.glob(storage.join(root, "sub"), "*.jsonl") == [
        storage.join(root, "sub", "c.jsonl")
    ]
    with pytest.raises(FileNotFoundError, match="no such file"):
        storage.read_text(storage.join(root, "missing.txt"))
    # One listing gives every file's stat key (directories left out); a rewrite changes it.
    keys = storage.stat_keys(root)
    assert keys == {"a.txt": storage.stat_key(storage.join(root, "a.txt"))}
    storage.write_text(storage.join(root, "a.txt"), "héllo again")
    assert storage.stat_keys(root)["a.txt"] not in ("", keys["a.txt"])
    storage.rmtree(storage.join(root, "sub"))
    assert storage.files(root) == ["a.txt"] and storage.listdir(storage.join(root, "nothing")) == []


def test_a_failed_write_leaves_no_file(root):
    target = storage.join(root, "half.txt")
    with pytest.raises(RuntimeError):
        with storage.atomic_writer(target) as f:
            f.write("partial")
            raise RuntimeError("killed")
    assert not storage.exists(target)


def test_directories_are_committed_by_their_marker(root):
    final = storage.join(root, "model")
    first = storage.DirectoryWriter(final, "model.json")
    storage.write_text(storage.join(first.staging, "params", "x"), "1")
    assert not storage.is_committed(final, "model.json")  # files alone are not a checkpoint
    first.commit('{"v": 1}')
    assert storage.is_committed(final, "model.json")
    assert storage.files(final) == ["model.json", "params/x"]
    # A replacement: until it commits, a reader sees the old directory complete (local: it is still
    # in place) or no committed directory at all (object stores: the old marker went first).
    second = storage.DirectoryWriter(final, "model.json")
    storage.write_text(storage.join(second.staging, "params", "y"), "2")
    if storage.is_remote(root):
        assert not storage.is_committed(final, "model.json")
    else:
        assert storage.files(final) == ["model.json", "params/x"]
    second.commit('{"v": 2}')
    assert storage.files(final) == ["model.json", "params/y"]
    assert json.loads(storage.read_text(storage.join(final, "model.json"))) == {"v": 2}
    assert not storage.exists(f"{final}.tmp") and not storage.exists(f"{final}.old")


def test_a_local_replacement_killed_between_renames_keeps_the_previous_directory(tmp_path):
    final = str(tmp_path / "out")
    writer = storage.DirectoryWriter(final, "model.json")
    writer.commit("{}")
    os.replace(final, f"{final}.old")  # killed after moving the old one aside
    storage.DirectoryWriter(final, "model.json").abort()  # the next writer recovers it first
    assert storage.is_committed(final, "model.json")


def test_names_from_manifests_stay_inside_their_directory(root):
    assert storage.contained(root, "a/b.txt", "m") == storage.join(root, "a", "b.txt")
    for bad in ("../x", "a/../../x", "/etc/passwd", "gs://other-bucket/x"):
        with pytest.raises(DataFormatError, match="m: .*(outside|must be a relative)"):
            storage.contained(root, bad, "m")


def test_local_copies_of_remote_directories_are_cached(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("QUERIT_JAX_CACHE", str(tmp_path / "cache"))
    remote = f"{bucket}/{uuid.uuid4().hex[:8]}/tok"
    storage.write_text(storage.join(remote, "tokenizer.json"), "{}")
    storage.write_text(storage.join(remote, "sub", "x.txt"), "x")
    local = storage.local_copy(remote)
    assert sorted(storage.files(local)) == ["sub/x.txt", "tokenizer.json"]
    assert storage.local_copy(remote) == local  # same listing: the cached copy
    storage.write_text(storage.join(remote, "tokenizer.json"), '{"changed": true}')
    assert storage.local_copy(remote) != local  # another size: a new copy
    assert storage.local_copy(str(tmp_path)) == str(tmp_path)
    # Leaving files out (a model's weights, for a reader of its configuration): its own copy.
    storage.write_text(storage.join(remote, "model.safetensors"), "weights")
    config_only = storage.local_copy(remote, skip=("*.safetensors",))
    assert sorted(storage.files(config_only)) == ["sub/x.txt", "tokenizer.json"]
    assert sorted(storage.files(storage.local_copy(remote)))[0] == "model.safetensors"


def test_a_model_checkpoint_round_trips_through_a_bucket(bucket, tmp_path, tokenizer):
    hf = make_hf_qwen3(str(tmp_path / "hf"), "seq_cls")
    model = load_model(hf)
    remote = f"{bucket}/{uuid.uuid4().hex[:8]}/ckpt"
    save_model(remote, model.spec, model.params, model.tokenizer)
    assert is_model_checkpoint(remote) and not os.path.exists("gs:")
    again = load_model(remote)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(again.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert again.tokenizer("Query: x")["input_ids"] == model.tokenizer("Query: x")["input_ids"]
    # Export a bucket checkpoint into the bucket; transformers reads it back with the same scores.
    from querit_jax.release.export import export_hf
    from querit_jax.release.verify import verify

    out = export_hf(again, f"{bucket}/{uuid.uuid4().hex[:8]}/export")
    assert storage.is_committed(out, "config.json")
    report = verify(again, out)
    assert report["max_abs_diff_transformers"] < 1e-4


def _hub_cache(cache: str, repo: str, source: str, commit: str = "a" * 40) -> str:
    """The layout huggingface_hub leaves after a download (refs/main -> snapshots/<commit>)."""
    base = os.path.join(cache, "models--" + repo.replace("/", "--"))
    storage.write_text(os.path.join(base, "refs", "main"), commit)
    storage.upload_tree(source, os.path.join(base, "snapshots", commit))
    return commit


def test_hub_ids_load_from_the_cache_offline(tmp_path, monkeypatch):
    hf = make_hf_qwen3(str(tmp_path / "hf"), "seq_cls")
    cache = str(tmp_path / "hub")
    commit = _hub_cache(cache, "querit-test/tiny-reranker", hf)
    monkeypatch.setenv("HF_HUB_CACHE", cache)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = load_model("querit-test/tiny-reranker")
    assert model.metadata["source"] == {"hub_id": "querit-test/tiny-reranker", "revision": commit}
    ref = load_model(hf)
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(ref.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(
        CheckpointError, match=r"querit-test/missing: not in the Hugging Face cache"
    ):
        load_model("querit-test/missing")


def test_a_hub_id_never_hides_a_local_directory(tmp_path, monkeypatch):
    hf = make_hf_qwen3(str(tmp_path / "org" / "name"), "seq_cls")
    monkeypatch.chdir(tmp_path)
    assert load_model("org/name").path == hf  # the local directory, not the Hub


FORBIDDEN = {
    "open",
    "os.path.exists", "os.path.isdir", "os.path.isfile", "os.path.getsize", "os.path.abspath",
    "os.path.realpath", "os.path.samefile", "os.listdir", "os.makedirs", "os.replace", "os.rename",
    "os.remove", "os.unlink", "os.rmdir", "os.walk", "os.scandir", "glob.glob", "np.load",
}  # fmt: skip
FORBIDDEN_MODULES = ("shutil", "tempfile", "pathlib")


def _dotted(node) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
    return ".".join(reversed(parts))


def test_no_location_is_touched_outside_the_storage_layer():
    """os/open/shutil/glob/tempfile on paths appear only in the querit_jax/storage package."""
    found = []
    for r, _, names in os.walk(os.path.join(ROOT, "querit_jax")):
        for name in names:
            path = os.path.join(r, name)
            storage_layer = os.path.join(ROOT, "querit_jax", "storage") + os.sep
            if not name.endswith(".py") or path.startswith(storage_layer):
                continue
            tree = ast.parse(open(path, encoding="utf-8").read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _dotted(node.func) in FORBIDDEN:
                    found.append(
                        f"{os.path.relpath(path, ROOT)}:{node.lineno} {_dotted(node.func)}"
                    )
                if isinstance(node, ast.Import | ast.ImportFrom):
                    mods = (
                        [a.name for a in node.names]
                        if isinstance(node, ast.Import)
                        else [node.module]
                    )
                    bad = [m for m in mods if m and m.split(".")[0] in FORBIDDEN_MODULES]
                    found += [
                        f"{os.path.relpath(path, ROOT)}:{node.lineno} import {m}" for m in bad
                    ]
    assert not found, "go through querit_jax.storage:\n" + "\n".join(found)
