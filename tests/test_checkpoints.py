"""Model checkpoints and Hugging Face directories: bad input gets a clear error and nothing unsafe
runs."""

import json
import os
import pickle
import shutil
import struct

import numpy as np
import pytest

from querit_jax.convert import hf_import
from querit_jax.convert.safetensors_io import read_file
from querit_jax.errors import CheckpointError, SafetensorsError
from querit_jax.loading import load_model, resolve_model_path
from querit_jax.models.spec import flatten
from tests.conftest import make_hf_qwen3


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_qwen3(str(tmp_path_factory.mktemp("hf") / "seq"), "seq_cls")


def test_directory_that_is_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="is not a querit_jax model checkpoint"):
        load_model(str(tmp_path))
    with pytest.raises(CheckpointError, match="no such directory"):
        load_model(str(tmp_path / "missing"))


def test_a_checkpoint_loads_from_a_relative_path(tmp_path, hf_dir, monkeypatch):
    """Users pass paths like workdirs/run (the README does); Orbax itself misreads relative ones."""
    hf_import.import_hf(hf_dir, str(tmp_path / "ckpt"))
    absolute = load_model(str(tmp_path / "ckpt"))
    monkeypatch.chdir(tmp_path)
    model = load_model("ckpt")
    assert resolve_model_path("ckpt") == str(tmp_path / "ckpt")
    # The same values as an absolute-path load (not merely some parameters: a misread path could
    # fall back to a fresh initialisation of the right shapes).
    got, want = flatten(model.params), flatten(absolute.params)
    assert got.keys() == want.keys() and len(got) > 10
    for name in want:
        np.testing.assert_array_equal(np.asarray(got[name]), np.asarray(want[name]), err_msg=name)
    hf = read_file(os.path.join(hf_dir, "model.safetensors"))["score.weight"]
    np.testing.assert_array_equal(np.asarray(got["score.kernel"]).T, hf)


def test_a_model_described_without_its_weights_is_the_loaded_one_minus_the_values(tmp_path, hf_dir):
    """`load_model(weights=False)` (what a resumed run asks of `init_from`): the same spec,
    tokenizer and parameter shapes, dtypes and shardings as a load, from a Hugging Face directory
    and a model checkpoint, without reading a tensor (both load with their weight files gone)."""
    import jax

    ckpt = hf_import.import_hf(hf_dir, str(tmp_path / "ckpt"))
    hf = shutil.copytree(hf_dir, str(tmp_path / "hf"))
    loaded = [load_model(path) for path in (hf, ckpt)]
    os.remove(os.path.join(hf, "model.safetensors"))
    shutil.rmtree(os.path.join(ckpt, "params"))
    for path, want in zip((hf, ckpt), loaded):
        got = load_model(path, weights=False)
        assert got.spec == want.spec and got.tokenizer.vocab == want.tokenizer.vocab
        assert jax.tree.structure(got.params) == jax.tree.structure(want.params)
        for a, b in zip(jax.tree.leaves(got.params), jax.tree.leaves(want.params)):
            assert isinstance(a, jax.ShapeDtypeStruct)
            assert (a.shape, a.dtype, a.sharding) == (b.shape, b.dtype, b.sharding)


def test_params_that_do_not_match_model_json_name_the_key(tmp_path, hf_dir):
    ckpt = hf_import.import_hf(hf_dir, str(tmp_path / "ckpt"))
    meta_path = os.path.join(ckpt, "model.json")
    with open(meta_path) as f:
        meta = json.load(f)
    meta["backbone"]["num_layers"] = 3
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(CheckpointError, match=r"missing \['model\.layers\.2\."):
        load_model(ckpt)
    meta["backbone"]["num_layers"] = 2
    meta["backbone"]["intermediate_size"] = 100
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(
        CheckpointError,
        match=r"model\.json\): parameter model\.layers\.0\.mlp\.down_proj\.kernel has shape \(96, "
        r"64\), the model expects \(100, 64\)",
    ):
        load_model(ckpt)


def test_bad_model_json(tmp_path, hf_dir):
    ckpt = hf_import.import_hf(hf_dir, str(tmp_path / "ckpt"))
    with open(os.path.join(ckpt, "model.json"), "w") as f:
        f.write("{not json")
    with pytest.raises(CheckpointError, match="model.json: invalid JSON"):
        load_model(ckpt)
    with open(os.path.join(ckpt, "model.json"), "w") as f:
        json.dump(
            {
                "format": "querit_jax.model",
                "family": "gpt9",
                "backbone": {},
                "head": {},
                "template": {},
            },
            f,
        )
    with pytest.raises(CheckpointError, match="unknown family 'gpt9'"):
        load_model(ckpt)


class _Boom:
    """Unpickling this would create a sentinel file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_checkpoints_are_refused_and_never_unpickled(tmp_path, hf_dir):
    bad = tmp_path / "pickled"
    shutil.copytree(hf_dir, bad)
    os.remove(bad / "model.safetensors")
    sentinel = tmp_path / "pwned"
    with open(bad / "pytorch_model.bin", "wb") as f:
        pickle.dump(_Boom(str(sentinel)), f)
    with pytest.raises(
        CheckpointError, match=r"only pickle weights \(pytorch_model\.bin\).*never reads them"
    ):
        load_model(str(bad))
    assert not sentinel.exists()


def test_tampered_safetensors_header(tmp_path, hf_dir):
    path = tmp_path / "model.safetensors"
    shutil.copyfile(os.path.join(hf_dir, "model.safetensors"), path)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    path.write_bytes(struct.pack("<Q", 10**12) + raw[8:])
    with pytest.raises(SafetensorsError, match="exceeds the file size"):
        read_file(str(path))
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 4
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])
    with pytest.raises(SafetensorsError, match=f"tensor '{name}' offsets"):
        read_file(str(path))


def test_unsupported_architecture(tmp_path, hf_dir):
    other = tmp_path / "llama"
    shutil.copytree(hf_dir, other)
    with open(other / "config.json") as f:
        cfg = json.load(f)
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    with open(other / "config.json", "w") as f:
        json.dump(cfg, f)
    with pytest.raises(CheckpointError, match="model_type 'llama'.*not supported"):
        load_model(str(other))


def test_missing_tensor_is_named(tmp_path, hf_dir):
    from querit_jax.convert.safetensors_io import write_file

    broken = tmp_path / "broken"
    shutil.copytree(hf_dir, broken)
    tensors = dict(read_file(str(broken / "model.safetensors")))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    write_file(str(broken / "model.safetensors"), tensors)
    with pytest.raises(CheckpointError, match="'model.layers.1.mlp.up_proj.weight' is missing"):
        load_model(str(broken))


def test_saving_a_small_replicated_model_compiles_no_program(tmp_path, hf_dir):
    """Orbax splits a replicated array among its replicas with one slicing program per shape (~1.5
    s of a tiny model's first save); below `REPLICA_PARALLEL_MIN_SLICE_BYTES` per slice one replica
    writes it whole, so saving a small model replicated over 8 devices compiles nothing. The save
    still restores exactly."""
    import jax

    from querit_jax import sharding
    from querit_jax.models.checkpoint import save_model

    mesh = sharding.make_mesh((8, 1, 1, 1))
    model = load_model(hf_dir, mesh, sharding.rules.resolve_rules("dp"))
    assert len(jax.tree.leaves(model.params)[0].sharding.device_set) == 8
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        save_model(str(tmp_path / "ckpt"), model.spec, model.params, model.tokenizer)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert not compiles
    again = load_model(str(tmp_path / "ckpt"))
    for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
