"""First stages: exact sharded top-k, BM25 in every language, the retrieve command."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from querit_jax.data import beir
from querit_jax.data.runs import read_run
from querit_jax.eval import metrics
from querit_jax.loading import first_stage_run
from querit_jax.retrieval.analyzers import UnicodeAnalyzer
from querit_jax.retrieval.bm25 import BM25Retriever
from querit_jax.retrieval.topk import ShardedCorpus, brute_force_top_k
from tests.conftest import SHARED, XQUAD
from tests.helpers import ROOT, xla_flags

MINILM = os.path.join(SHARED, "models", "all-MiniLM-L6-v2")


@pytest.mark.parametrize("n", [1003, 7, 64])
def test_sharded_top_k_on_8_devices_equals_single_device_brute_force(n):
    rng = np.random.default_rng(n)
    corpus = rng.standard_normal((n, 24)).astype(np.float32)
    queries = rng.standard_normal((37, 24)).astype(np.float32)
    if n > 10:
        corpus[3] = corpus[n - 2]  # exact ties across shards: the lower index must come first
        queries[0] = corpus[3]
    sharded = ShardedCorpus(corpus, jax.devices(), block=32)
    assert len(sharded.matrix.sharding.device_set) == 8
    k = min(10, n)
    scores, ids = sharded.search(queries, 10, batch=16)
    ref_scores, ref_ids = brute_force_top_k(queries, corpus, k, sharded.block, batch=16)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    if n > 10:
        assert list(ids[0][:2]) == [3, n - 2]
    one = ShardedCorpus(corpus, jax.devices()[:1], block=32)
    assert one.block == sharded.block  # the same dots whatever the device count
    one_scores, one_ids = one.search(queries, 10, batch=16)
    np.testing.assert_array_equal(one_ids, ids)
    np.testing.assert_array_equal(one_scores, scores)


def test_corpus_is_a_program_argument_not_a_compiled_constant():
    corpus = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    sharded = ShardedCorpus(corpus, jax.devices(), block=8)
    from querit_jax.retrieval import topk

    hlo = topk._sharded_top_k.lower(
        np.zeros((2, 4), np.float32),
        sharded.matrix,
        mesh=sharded.mesh,
        k=3,
        block=sharded.block,
        per_shard=sharded.per_shard,
        n=sharded.n,
    ).as_text()
    assert 'dense<"0x' not in hlo  # a baked-in corpus shows up as a hex constant


def test_empty_corpus_is_refused():
    with pytest.raises(ValueError, match="non-empty"):
        ShardedCorpus(np.zeros((0, 4), np.float32))


def test_unicode_bm25_works_for_unsegmented_scripts():
    terms = UnicodeAnalyzer()(["黑豹队的防守", "Défense DES Panthers"])
    assert "黑豹" in terms[0] and "防" in terms[0]
    assert terms[1] == ["défense", "des", "panthers"]
    ds = beir.load_beir(os.path.join(XQUAD, "zh", "test"), "test")
    run = first_stage_run("bm25", ds, 100)
    assert metrics.evaluate(ds.qrels, run, ["ndcg@10"])[0]["ndcg@10"] > 0.7
    ids = sorted(ds.corpus)
    retriever = BM25Retriever(ids, [ds.doc_text(d) for d in ids], UnicodeAnalyzer())
    assert retriever.search({"q": "@@@ ###"}, 5) == {
        "q": {}
    }  # a query with no known term retrieves nothing


def _retrieve(*args):
    env = {**os.environ, "XLA_FLAGS": xla_flags(), "JAX_PLATFORMS": "cpu"}
    return subprocess.run(
        [sys.executable, "-m", "querit_jax.retrieve", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(not os.path.isdir(MINILM), reason=f"{MINILM} is absent")
def test_retrieve_command_with_an_embedder_and_with_bm25(tmp_path):
    data = os.path.join(XQUAD, "en", "test")
    for model in (MINILM, "bm25"):
        out = tmp_path / f"{os.path.basename(model)}.trec"
        proc = _retrieve(f"--model={model}", f"--data={data}", "--top_k=20", f"--output={out}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        run = read_run(str(out))
        assert len(run) == 199
        sizes = {len(docs) for docs in run.values()}
        assert (
            sizes == {20} if model != "bm25" else max(sizes) == 20
        )  # BM25 skips zero-score documents
        reported = json.loads(proc.stderr[proc.stderr.index("{") : proc.stderr.index("}") + 1])
        ds = beir.load_beir(data, "test")
        assert reported["ndcg@10"] == pytest.approx(
            metrics.evaluate(ds.qrels, run)[0]["ndcg@10"], abs=1e-4
        )
        assert reported["ndcg@10"] > 0.6  # MiniLM is an English model; en is its home language


def test_retrieve_with_a_reranker_is_a_clear_error(tiny_workdir, tmp_path):
    proc = _retrieve(
        f"--model={tiny_workdir}", f"--data={XQUAD}/en/test", f"--output={tmp_path / 'r.trec'}"
    )
    assert (
        proc.returncode == 2 and "is a reranker" in proc.stderr and "Traceback" not in proc.stderr
    )


def _fake_embed(texts, role, progress=None):
    """A deterministic stand-in embedder: character trigram counts hashed into 16 dimensions."""
    out = np.zeros((len(texts), 16), np.float32)
    for i, t in enumerate(texts):
        for j in range(len(t) - 2):
            out[i, hash(t[j : j + 3]) % 16] += 1.0
    if progress is not None:
        progress.update(len(texts))
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def test_docstore_streams_a_corpus_once_and_reads_rows_and_ids(tmp_path, monkeypatch):
    import gzip

    from querit_jax.data import docstore
    from querit_jax.data.io import fingerprint

    path = str(tmp_path / "corpus.jsonl.gz")
    lines = [
        json.dumps({"_id": "d1", "title": "Tí", "text": "primero"}),
        json.dumps({"_id": "d2", "text": ""}),  # empty: skipped, counted
        "not json",  # counted
        json.dumps({"_id": "d3", "text": "黑豹队的防守"}),
        json.dumps({"_id": "d1", "text": "again"}),  # duplicate id: the first copy is kept
        json.dumps({"_id": 7, "text": "a numeric id"}),
    ]
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    store = docstore.build([path], str(tmp_path / "ds"))
    assert len(store) == 3 and store.meta["skipped"] == 3
    assert store.texts([0, 1, 2]) == ["Tí primero", "黑豹队的防守", "a numeric id"]
    assert store.ids([2, 0]) == ["7", "d1"] and store.row("d3") == 1 and store.row("d2") is None
    assert store.sha256 == fingerprint([path])  # hashed while streaming, never again
    assert list(store.iter_texts(chunk=2)) == [["Tí primero", "黑豹队的防守"], ["a numeric id"]]
    assert docstore.is_current(str(tmp_path / "ds"), [path])
    os.utime(path, ns=(1, 1))  # rewritten (same bytes): the stat key changes, the store is stale
    assert not docstore.is_current(str(tmp_path / "ds"), [path])
    # Seen ids move from a set into a sorted array every SEEN_CHUNK documents: with chunks of one,
    # the duplicate is found in the array, and the store is the same.
    monkeypatch.setattr(docstore, "SEEN_CHUNK", 1)
    again = docstore.build([path], str(tmp_path / "ds1"))
    assert again.meta["skipped"] == 3 and again.ids([0, 1, 2]) == store.ids([0, 1, 2])
    assert again.row("d1") == 0 and again.texts([0]) == ["Tí primero"]


def test_bm25_built_in_chunks_equals_bm25s_and_is_memory_mapped_when_saved(tmp_path):
    import bm25s

    from querit_jax.retrieval import bm25

    texts = [
        beir.doc_text(d["title"], d["text"])
        for lang in ("es", "zh")
        for d in beir.load_corpus(os.path.join(XQUAD, lang, "test", "corpus.jsonl")).values()
    ]
    analyzer = UnicodeAnalyzer()
    ref = bm25s.BM25()
    ref.index(analyzer(texts), show_progress=False)
    queries = ["complejidad computacional", "黑豹队的防守", "teoría de la computación"]
    want_docs, want_scores = ref.retrieve(analyzer(queries), k=10, show_progress=False)
    location = str(tmp_path / "bm25")
    chunks = (texts[i : i + 37] for i in range(0, len(texts), 37))
    bm25.build_index(chunks, analyzer, location, {"corpus": "test"})
    loaded = bm25.BM25Retriever.load(location, analyzer, [f"d{i}" for i in range(len(texts))])
    assert isinstance(loaded._bm25.scores["data"], np.memmap)
    for (rows, scores), docs, s in zip(loaded.search_rows(queries, 10), want_docs, want_scores):
        np.testing.assert_allclose(scores, s[s > 0], rtol=1e-6)
        assert set(rows.tolist()) == set(docs[s > 0].tolist())
    assert loaded.search({"q": queries[0]}, 2)["q"] == dict(
        zip(loaded.doc_ids(want_docs[0][:2]), map(float, want_scores[0][:2]))
    )


def test_dense_index_is_filled_part_by_part_on_every_device(tmp_path):
    from querit_jax.retrieval import dense

    texts = [f"document number {i} about {'abcdefgh'[i % 8] * (i % 5 + 1)}" for i in range(203)]
    ids = [f"d{i}" for i in range(203)]
    whole = dense.DenseRetriever(_fake_embed, jax.devices(), block=16, progress=False, chunk=50)
    whole.index(ids, texts)
    assert len(whole.corpus.matrix.sharding.device_set) == 8
    location = str(tmp_path / "dense")
    for process in (1, 0):  # two processes' parts, then process 0's marker
        dense.embed_parts(_fake_embed, lambda a, b: texts[a:b], 203, location, 64, process, 2)
    dense.commit_parts(location, 203, 64, {"model": "fake"})
    loaded = dense.DenseRetriever.load(location, _fake_embed, ids, jax.devices(), block=16)
    queries = {"a": "document about ccc", "b": "number 7"}
    assert loaded.search(queries, 5) == whole.search(queries, 5)
    ref = ShardedCorpus(_fake_embed(texts, "document"), jax.devices()[:1], block=16)
    np.testing.assert_array_equal(
        ref.search(_fake_embed(list(queries.values()), "query"), 5)[1],
        whole.corpus.search(_fake_embed(list(queries.values()), "query"), 5)[1],
    )
