"""Score parity between a querit_jax model and a Hugging Face directory (transformers, optionally
sentence-transformers), on the same pairs. Needs torch, which only the test/export extras install."""

import numpy as np

from querit_jax.data.templates import pad_batch
from querit_jax.eval.scoring import scorer_for

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


def hf_scores(hf_dir: str, sequences, pad_id: int) -> np.ndarray:
    """Scores token sequences with AutoModelForSequenceClassification (fp32, right padding)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ids, seg = pad_batch(sequences, max(len(s) for s in sequences), pad_id)
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(seg)
        ).logits
    return out[:, 0].float().numpy()


def cross_encoder_scores(hf_dir: str, pairs) -> np.ndarray:
    from sentence_transformers import CrossEncoder

    return np.asarray(CrossEncoder(hf_dir).predict(list(pairs), batch_size=8), np.float32)


def verify(
    model, hf_dir: str, pairs=SAMPLE_PAIRS, check_sentence_transformers: bool = True
) -> dict:
    """Returns {"max_abs_diff_transformers": ..., "max_abs_diff_sentence_transformers": ...}."""
    from transformers import AutoTokenizer

    scorer = scorer_for(model)
    queries, docs = [p[0] for p in pairs], [p[1] for p in pairs]
    sequences = scorer.encoder(queries, docs)
    ours = scorer.score_tokens(model.params, sequences)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    report = {"pairs": len(pairs), "jax_scores": ours.tolist()}
    report["max_abs_diff_transformers"] = float(
        np.abs(hf_scores(hf_dir, sequences, tok.pad_token_id) - ours).max()
    )
    if check_sentence_transformers:
        report["max_abs_diff_sentence_transformers"] = float(
            np.abs(cross_encoder_scores(hf_dir, pairs) - ours).max()
        )
    return report
