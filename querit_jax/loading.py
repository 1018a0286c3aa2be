"""Any model location -> a model ready to run on a mesh; names of first stages and teachers -> objects.

A model location is a querit_jax model checkpoint (`models.checkpoint`), a training workdir (its
`model/`) or a Hugging Face model directory (converted in memory by `convert.hf_import`). This module
sits above `models/`, `convert/`, `retrieval/` and `inference/`, so none of them needs another's
loading code: `load_model` for models, `load_teacher` for teachers, `build_retriever` and
`first_stage_run` for first stages ("bm25" or an embedder location).
"""

import functools
import os
from collections.abc import Sequence

from jax.sharding import Mesh

from querit_jax import sharding
from querit_jax.convert import hf_import
from querit_jax.data.beir import BeirDataset
from querit_jax.data.runs import Run
from querit_jax.errors import CheckpointError
from querit_jax.inference.runners import embedder_for
from querit_jax.inference.teacher import Teacher
from querit_jax.models.checkpoint import is_model_checkpoint, read_spec, restore_params
from querit_jax.models.spec import LoadedModel, abstract_params, place_params, yes_no_to_score
from querit_jax.retrieval import Retriever
from querit_jax.retrieval.analyzers import analyzer_for
from querit_jax.retrieval.bm25 import BM25Retriever
from querit_jax.retrieval.dense import DenseRetriever


def is_hf_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "config.json"))


def resolve_model_path(path: str) -> str:
    """A model checkpoint, a Hugging Face dir, or a training workdir (-> its `model/`), absolute."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such directory.")
    path = os.path.abspath(path)
    if is_model_checkpoint(path) or is_hf_dir(path):
        return path
    if is_model_checkpoint(os.path.join(path, "model")):
        return os.path.join(path, "model")
    raise CheckpointError(
        f"{path} is not a querit_jax model checkpoint (no model.json), a Hugging Face model directory "
        "(no config.json) or a training workdir (no model/model.json). Train a model, import one with "
        "tools/convert_hf/import_hf.py, or point to the right directory."
    )


def load_model(
    path: str,
    mesh: Mesh | None = None,
    logical_rules=None,
    *,
    tokenizer_path: str = "",
    head: str = "auto",
    yes_token: str = "yes",
    no_token: str = "no",
    **spec_fields,
) -> LoadedModel:
    """Loads a model checkpoint, a Hugging Face directory or a training workdir onto `mesh`.

    Args:
      head: "auto" keeps the stored head (HF: by architecture); "score" converts a yes/no head exactly
        into a linear head; "yes_no" needs a checkpoint that has an LM head.
      spec_fields: spec/backbone fields to override (dtype, param_dtype, remat, template, max_length...).
    Raises:
      CheckpointError: naming the path and the offending key, for anything unusable.
    """
    from transformers import AutoTokenizer

    path = resolve_model_path(path)
    mesh = mesh or sharding.single_device_mesh()
    logical_rules = logical_rules or sharding.rules.resolve_rules("fsdp")
    if not is_model_checkpoint(path):
        spec, params, tokenizer = hf_import.read_hf_dir(
            path, head=head, tokenizer_path=tokenizer_path, yes_token=yes_token, no_token=no_token
        )
        meta = {"source": path}
    else:
        spec, meta = read_spec(path)
        _, abstract = abstract_params(spec, mesh, logical_rules)
        params = restore_params(path, spec, abstract)
        tokenizer = AutoTokenizer.from_pretrained(
            tokenizer_path or os.path.join(path, meta.get("tokenizer", "tokenizer"))
        )
        if head == "score" and spec.head.kind == "yes_no":
            spec, params = yes_no_to_score(spec, params)
        elif head not in ("auto", spec.head.kind):
            raise CheckpointError(
                f"{path}: has a {spec.head.kind} head; it cannot be turned into a {head} head."
            )
    if len(tokenizer) > spec.backbone.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the model only {spec.backbone.vocab_size} "
            "embedding rows; use the model's own tokenizer."
        )
    if spec_fields:
        try:
            spec = spec.replace(**spec_fields)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: {e}") from None
    if getattr(spec.backbone, "moe_impl", "") == "ep" and not isinstance(
        dict(logical_rules).get(sharding.axes.EXPERT), str
    ):
        # How experts run is a runtime choice: expert parallelism needs an expert mesh axis, and
        # the grouped path computes the same function on any mesh.
        spec = spec.replace(moe_impl="grouped")
    graphdef, abstract = abstract_params(spec, mesh, logical_rules)
    params = place_params(params, abstract, path)
    return LoadedModel(spec, graphdef, params, tokenizer, path, meta, mesh, logical_rules)


def load_teacher(path: str, batch_size: int = 64, max_length: int | None = None) -> Teacher:
    """A teacher (reranker scores or embedder similarities) from any model location."""
    return Teacher(load_model(path), batch_size, max_length, path=path)


def build_retriever(
    spec: str,
    doc_ids: Sequence[str],
    texts: Sequence[str],
    bm25_tokenizer="unicode",
    batch_size: int = 128,
    max_length: int | None = None,
    progress: bool = True,
) -> Retriever:
    """An indexed first stage: "bm25" (with `bm25_tokenizer`: "unicode", a tokenizer directory or a
    loaded tokenizer) or the location of an embedder model."""
    if spec == "bm25":
        return BM25Retriever(doc_ids, texts, analyzer_for(bm25_tokenizer))
    embed = embedding_function(spec, batch_size, max_length)
    return DenseRetriever(embed, progress=progress).index(doc_ids, texts)


def embedding_function(path: str, batch_size: int = 128, max_length: int | None = None):
    """`embed(texts, role, progress=None) -> [n, D]` of the embedder at `path` (loaded once)."""
    model = load_model(path)
    runner = embedder_for(model, batch_size=batch_size, max_length=max_length)
    return functools.partial(runner.embed, model.params)


def first_stage_run(
    spec: str,
    dataset: BeirDataset,
    top_k: int = 100,
    bm25_tokenizer="unicode",
    batch_size: int = 128,
    max_length: int | None = None,
    progress: bool = True,
) -> Run:
    """A run for every query of `dataset` from the first stage `spec` ("bm25" or an embedder)."""
    doc_ids = list(dataset.corpus)
    texts = [dataset.doc_text(d) for d in doc_ids]
    retriever = build_retriever(
        spec, doc_ids, texts, bm25_tokenizer, batch_size, max_length, progress
    )
    return retriever.search(dataset.queries, top_k)
