"""Score parity between a querit_jax model and its Hugging Face export (transformers and,
optionally,
sentence-transformers), on the same pairs. Needs torch, which only the test extras install.

The JAX side runs in float32 whatever compute dtype the model was trained with, because transformers
runs the export in float32: the check is about conversion, not about bf16 rounding. A bf16 (or fp16)
export is compared with the JAX model whose parameters went through the same rounding, so the parity
tolerance stays that of float32. Sharded exports (model.safetensors.index.json) load as any other.
"""

import json

import jax
import numpy as np

from querit_jax import storage
from querit_jax.data.tokenize import pad_batch
from querit_jax.inference.runners import Embedder, Scorer
from querit_jax.models.spec import LoadedModel, abstract_params

SAMPLE_PAIRS = [
    (
        "How many points did the Panthers defense surrender?",
        "The Panthers defense gave up just 308 points.",
    ),
    ("黑豹队的防守丢了多少分", "黑豹队的防守只丢了 308分，在联赛中排名第六。"),
    ("Сколько очков пропустила защита?", "Защита «Пантер» пропустила всего 308 очков."),
    (
        "¿Cuántos puntos permitió la defensa?",
        "La defensa de los Panthers permitió solo 308 puntos.",
    ),
    ("a", "A long document about nothing in particular. " * 40),
]


def hf_scores(hf_dir: str, sequences, types=None) -> np.ndarray:
    """Scores token sequences with transformers in float32, the way the export is meant to be run.

    *ForSequenceClassification: right padding, logits of the pooled token. Qwen3ForCausalLM (yes/no
    export): left padding, logit[yes] - logit[no] at the last position (sentence-transformers'
    LogitScore).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    hf_dir = storage.local_copy(hf_dir)  # transformers reads local files
    config = json.loads(storage.read_text(storage.join(hf_dir, "config.json")))
    pad_id = AutoTokenizer.from_pretrained(hf_dir).pad_token_id
    causal = config["architectures"][0].endswith("ForCausalLM")
    ids, seg, tt = pad_batch(
        sequences, max(len(s) for s in sequences), pad_id, left=causal, types=types
    )
    inputs = {"input_ids": torch.tensor(ids, dtype=torch.long), "attention_mask": torch.tensor(seg)}
    if types is not None:
        inputs["token_type_ids"] = torch.tensor(tt, dtype=torch.long)
    with torch.no_grad():
        if not causal:
            # use_safetensors: never a pickle .bin, even if one sits next to the export.
            model = AutoModelForSequenceClassification.from_pretrained(
                hf_dir, dtype=torch.float32, use_safetensors=True
            ).eval()
            return model(**inputs).logits[:, 0].float().numpy()
        model = AutoModelForCausalLM.from_pretrained(
            hf_dir, dtype=torch.float32, use_safetensors=True
        ).eval()
        head = config["querit_jax"]["head"]
        logits = model(**inputs).logits[:, -1].float()
        return (logits[:, head["yes_token_id"]] - logits[:, head["no_token_id"]]).numpy()


def cross_encoder_scores(hf_dir: str, pairs) -> np.ndarray:
    import torch
    from sentence_transformers import CrossEncoder

    # float32 like hf_scores (a bf16 export would otherwise run in bf16); never a pickle .bin.
    kwargs = {"use_safetensors": True, "dtype": torch.float32}
    model = CrossEncoder(hf_dir, model_kwargs=kwargs)
    return np.asarray(model.predict(list(pairs), batch_size=8), np.float32)


def verify(
    model: LoadedModel,
    hf_dir: str,
    pairs=SAMPLE_PAIRS,
    check_sentence_transformers: bool = True,
) -> dict:
    """Rerankers: {"max_abs_diff_transformers", ["max_abs_diff_sentence_transformers"]} over
    `pairs`;
    embedders: {"max_abs_diff_sentence_transformers"} over the pairs' queries and documents."""
    hf_dir = storage.local_copy(hf_dir)  # transformers and sentence-transformers read local files
    model = _rounded_like_export(model, hf_dir)
    spec32 = model.spec.replace(dtype="float32")
    graphdef, _ = abstract_params(spec32)
    if spec32.head.kind == "embed":
        from sentence_transformers import SentenceTransformer

        embedder = Embedder(spec32, graphdef, model.tokenizer, model.mesh, model.logical_rules)
        st = SentenceTransformer(hf_dir, device="cpu")
        diffs = []
        for role, texts in (("query", [p[0] for p in pairs]), ("document", [p[1] for p in pairs])):
            ours = embedder.embed(model.params, texts, role)
            theirs = st.encode(texts, prompt_name=role, convert_to_numpy=True)
            diffs.append(float(np.abs(ours - theirs).max()))
        return {"texts": 2 * len(pairs), "max_abs_diff_sentence_transformers": max(diffs)}
    scorer = Scorer(spec32, graphdef, model.tokenizer, model.mesh, model.logical_rules)
    sequences, types = scorer.encoder.encode([p[0] for p in pairs], [p[1] for p in pairs])
    ours = scorer.score_tokens(model.params, sequences, types)
    report = {"pairs": len(pairs), "jax_scores": ours.tolist()}
    report["max_abs_diff_transformers"] = float(
        np.abs(hf_scores(hf_dir, sequences, types) - ours).max()
    )
    if check_sentence_transformers:
        report["max_abs_diff_sentence_transformers"] = float(
            np.abs(cross_encoder_scores(hf_dir, pairs) - ours).max()
        )
    return report


def _rounded_like_export(model: LoadedModel, hf_dir: str) -> LoadedModel:
    """`model` with floating-point parameters rounded to the export's dtype (config.json "dtype"),
    then back to their own dtype: what the exported weights hold."""
    import dataclasses

    import jax.numpy as jnp

    dtype = json.loads(storage.read_text(storage.join(hf_dir, "config.json"))).get("dtype")
    if dtype not in ("bfloat16", "float16"):
        return model

    def rounded(p):
        if not jnp.issubdtype(p.dtype, jnp.floating):
            return p
        return p.astype(dtype).astype(p.dtype)

    return dataclasses.replace(model, params=jax.tree.map(rounded, model.params))
