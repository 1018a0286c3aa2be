"""Untrusted files are never executed, manifest paths stay in their directory, secrets stay in the
env."""

import json
import os
import pickle
import re

import grain
import jax.numpy as jnp
import pytest

from querit_jax import storage
from querit_jax.convert import hf_import
from querit_jax.data import mined
from querit_jax.errors import CheckpointError, DataFormatError
from querit_jax.loading import load_model
from querit_jax.mining import miner
from querit_jax.training.checkpointing import Checkpointer
from tests.conftest import make_hf_qwen3
from tests.helpers import ROOT


class _Boom:
    """Unpickling this creates the sentinel file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickle_over_every_file(directory, sentinel):
    payload = pickle.dumps(_Boom(str(sentinel)))
    for d, _, files in os.walk(directory):
        for f in files:
            with open(os.path.join(d, f), "wb") as out:
                out.write(payload)


def test_no_unsafe_loader_in_the_package():
    """No pickle-based loading and no remote code anywhere in the sources (a regression guard)."""
    unsafe = re.compile(
        r"trust_remote_code\s*=\s*True|torch\.load\(|pickle\.loads?\(|allow_pickle\s*=\s*True|"
        r"joblib\.load|dill\.load|cloudpickle"
    )
    hits = []
    for top in ("querit_jax", "tools", "launch", "configs"):
        for d, _, files in os.walk(os.path.join(ROOT, top)):
            for f in files:
                if f.endswith(".py"):
                    text = open(os.path.join(d, f), encoding="utf-8").read()
                    hits += [f"{d}/{f}: {m.group(0)}" for m in unsafe.finditer(text)]
    assert not hits, hits


def test_pickle_in_place_of_a_model_checkpoint_is_refused_unexecuted(tmp_path):
    hf = make_hf_qwen3(str(tmp_path / "hf"), "seq_cls")
    ckpt = hf_import.import_hf(hf, str(tmp_path / "ckpt"))
    sentinel = tmp_path / "pwned"
    _pickle_over_every_file(os.path.join(ckpt, "params"), sentinel)
    with pytest.raises(CheckpointError, match=r"params: not a readable Orbax checkpoint"):
        load_model(ckpt)
    assert not sentinel.exists()


def test_pickle_in_place_of_a_training_checkpoint_is_refused_unexecuted(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=2, async_save=False)
    data = iter(grain.MapDataset.range(10).to_iter_dataset())
    state = {"w": jnp.arange(4.0)}
    ckpt.save(1, state, data, {"model": {}})
    ckpt.close()
    sentinel = tmp_path / "pwned"
    _pickle_over_every_file(str(tmp_path / "checkpoints" / "1"), sentinel)
    ckpt = Checkpointer(str(tmp_path / "checkpoints"), keep=2, async_save=False)
    warnings = []
    with pytest.raises(CheckpointError, match=r"no checkpoint restores \(step 1 \("):
        ckpt.restore_latest(
            {"w": jnp.zeros(4)}, iter(grain.MapDataset.range(10).to_iter_dataset()),
            lambda saved: None, warnings.append,
        )  # fmt: skip
    assert "checkpoint step 1" in warnings[0] and not sentinel.exists()


def test_manifest_entries_cannot_leave_their_directory(tmp_path):
    out = tmp_path / "mined"
    out.mkdir()
    (tmp_path / "secret.txt").write_text("not yours")
    for bad in ("../secret.txt", str(tmp_path / "secret.txt"), "a/../../secret.txt"):
        manifest = {"complete": True, "shards": {"0": {"file": bad}}}
        (out / "manifest.json").write_text(json.dumps(manifest))
        with pytest.raises(DataFormatError, match="manifest.json: .* (outside|must be a relative)"):
            mined.shard_files(str(out))
    assert storage.contained(str(out), "shard-00000.jsonl", "m").endswith("mined/shard-00000.jsonl")


def test_api_key_never_reaches_files_or_logs(tmp_path, monkeypatch, capsys, caplog):
    """Mining through an OpenAI-compatible server: the key goes in the HTTP header and nowhere
    else."""
    import dataclasses

    from tests.test_mining import _cfg
    from tests.test_openai_client import SECRET, _Server

    monkeypatch.setenv("QUERIT_TEST_API_KEY", SECRET)
    monkeypatch.setenv("HF_TOKEN", SECRET + "-hf")
    teacher = make_hf_qwen3(str(tmp_path / "teacher"), "seq_cls", std=0.05)
    server = _Server()
    try:
        cfg = dataclasses.replace(
            _cfg(tmp_path, teacher, max_docs=8),
            generator="openai",
            generator_model="m",
            endpoint=server.url,
            api_key_env="QUERIT_TEST_API_KEY",
        )
        logs = []
        manifest = miner.mine(cfg, log=logs.append)
    finally:
        server.close()
    assert manifest["complete"] and server.auth == {f"Bearer {SECRET}"}
    texts = ["\n".join(map(str, logs)), caplog.text, *capsys.readouterr()]
    for d, _, files in os.walk(cfg.output):
        texts += [open(os.path.join(d, f), "rb").read().decode("utf-8", "replace") for f in files]
    assert len(texts) > 3 and not [t for t in texts if SECRET in t]
