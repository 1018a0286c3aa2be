"""Test set-up: 8 fake CPU devices (set before jax is imported) and shared fixtures.

Never time anything under this flag: the 8 "devices" share the 2 cores.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import shutil

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
DEMO_TOKENIZER = os.path.join(ROOT, "data", "tokenizers", "xquad_r_bpe")
XQUAD = os.path.join(ROOT, "data", "xquad_r")


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(DEMO_TOKENIZER)


def make_hf_qwen3(
    out_dir: str,
    arch: str = "seq_cls",
    tie: bool = False,
    seed: int = 0,
    std: float = 0.1,
    pad_token: str | None = None,
    **config,
) -> str:
    """Saves a tiny random transformers Qwen3 model (+ the demo tokenizer) to out_dir.

    arch: seq_cls (Qwen3ForSequenceClassification), causal_lm (Qwen3ForCausalLM) or base (Qwen3Model).
    """
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(DEMO_TOKENIZER)
    if pad_token:
        tok.pad_token = pad_token
    torch.manual_seed(seed)
    fields = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        num_labels=1,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=tie,
        rope_theta=10000.0,
        max_position_embeddings=512,
    )
    fields.update(config)
    cfg = transformers.Qwen3Config(**fields)
    cls = {
        "seq_cls": transformers.Qwen3ForSequenceClassification,
        "causal_lm": transformers.Qwen3ForCausalLM,
        "base": transformers.Qwen3Model,
    }[arch]
    model = cls(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    shutil.rmtree(out_dir, ignore_errors=True)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
    """A workdir trained with general_relevance.py:tiny (4 steps), shared by CLI tests."""
    from querit_jax import config_lib
    from querit_jax.training import trainer
    from tests.helpers import load_config

    cfg = config_lib.from_config_dict(load_config("configs/general_relevance.py", "tiny"))
    workdir = str(tmp_path_factory.mktemp("tiny_workdir"))
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        trainer.run(cfg, workdir, devices=_first_devices(1))
    finally:
        os.chdir(cwd)
    return workdir


def _first_devices(n):
    import jax

    return jax.devices()[:n]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
