"""Data formats, the XQuAD-R converter, groups, the TFDS builder, the grain pipeline and
templates."""

import filecmp
import json
import os
import shutil
import sys
import tempfile

import numpy as np
import pytest

from querit_jax import storage
from querit_jax.data import beir, groups, pipeline, tfds_groups, xquad_r
from querit_jax.data.io import ReadReport, fingerprint
from querit_jax.data.tokenize import PairEncoder, pad_batch
from querit_jax.errors import DataFormatError
from querit_jax.models.templates import qwen3_pair, qwen3_reranker
from querit_jax.retrieval.analyzers import SubwordAnalyzer
from querit_jax.retrieval.bm25 import BM25Retriever
from tests.conftest import SHARED, XQUAD, write_jsonl


def _beir(root, corpus=None, queries=None, qrels=None):
    os.makedirs(os.path.join(root, "qrels"), exist_ok=True)
    write_jsonl(
        os.path.join(root, "corpus.jsonl"),
        corpus
        or [
            {"_id": "d1", "title": "", "text": "Berlin is the capital of Germany."},
            {"_id": "d2", "title": "Paris", "text": "Paris is the capital of France."},
            {"_id": "d3", "title": "", "text": "Rome is in Italy."},
        ],
    )
    write_jsonl(
        os.path.join(root, "queries.jsonl"),
        queries
        or [
            {"_id": "q1", "text": "capital of Germany"},
            {"_id": "q2", "text": "capital of France"},
        ],
    )
    with open(os.path.join(root, "qrels", "test.tsv"), "w") as f:
        f.write(qrels or "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t1\n")
    return str(root)


def test_beir_reader(tmp_path):
    ds = beir.load_beir(_beir(tmp_path / "ds"), "test")
    assert ds.positives("q1") == ["d1"]
    assert ds.doc_text("d2") == "Paris Paris is the capital of France."


def test_malformed_jsonl_line_names_file_and_line(tmp_path):
    root = _beir(tmp_path / "ds")
    with open(os.path.join(root, "corpus.jsonl"), "a") as f:
        f.write('{"_id": "d4", "text": "unterminated\n')
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:4: invalid JSON"):
        beir.load_beir(root)
    relaxed = beir.load_beir(root, strict=False)
    assert relaxed.report.skipped == 1 and "corpus.jsonl:4" in relaxed.report.reasons[0]


def test_qrels_row_naming_a_missing_document(tmp_path):
    root = _beir(
        tmp_path / "ds", qrels="query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\tmissing-doc\t1\n"
    )
    with pytest.raises(
        DataFormatError, match=r"test\.tsv:3: document id 'missing-doc' is not in the corpus"
    ):
        beir.load_beir(root)


def test_empty_document_is_an_error(tmp_path):
    root = _beir(
        tmp_path / "ds",
        corpus=[{"_id": "d1", "title": "", "text": "ok"}, {"_id": "d2", "title": " ", "text": ""}],
    )
    with pytest.raises(DataFormatError, match=r"corpus\.jsonl:2: document 'd2' is empty"):
        beir.load_beir(root)


def _xquad_fixture(path, answer_start=5):
    data = {
        "data": [
            {
                "title": "T",
                "paragraphs": [
                    {
                        "context": "Aaaa. Bbbb cc. Ddd.",
                        "sentences": ["Aaaa.", "Bbbb cc.", "Ddd."],
                        "sentence_breaks": [[0, 5], [6, 14], [15, 19]],
                        "qas": [
                            {
                                "id": "q1",
                                "question": "What is bbbb?",
                                "answers": [{"answer_start": 6, "text": "Bbbb"}],
                            },
                            {
                                "id": "q2",
                                "question": "Which one?",
                                "answers": [{"answer_start": answer_start, "text": " "}],
                            },
                        ],
                    }
                ],
            }
        ]
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def test_xquad_r_converter_picks_the_answer_sentence(tmp_path):
    _xquad_fixture(tmp_path / "en.json", answer_start=16)
    counts = xquad_r.convert(str(tmp_path), str(tmp_path / "out"), ["en"], test_every=1)
    assert counts["en"] == {
        "train": {"documents": 0, "queries": 0},
        "test": {"documents": 3, "queries": 2},
    }
    ds = beir.load_beir(str(tmp_path / "out" / "en" / "test"), "test")
    assert ds.qrels == {"q1": {"a00-p00-s01": 1}, "q2": {"a00-p00-s02": 1}}


def test_xquad_r_answer_outside_every_sentence_is_an_error(tmp_path):
    _xquad_fixture(tmp_path / "en.json", answer_start=5)  # the space between sentences 0 and 1
    with pytest.raises(DataFormatError, match="question q2 answer_start=5 lies in no sentence"):
        xquad_r.convert(str(tmp_path), str(tmp_path / "out"), ["en"])


@pytest.mark.skipif(
    not os.path.isdir(os.path.join(SHARED, "data", "xquad-r")),
    reason="../shared/data/xquad-r absent",
)
def test_committed_xquad_r_sample_is_reproducible(tmp_path):
    """The bundled data/xquad_r is exactly the converter's output on the upstream files."""
    xquad_r.convert(os.path.join(SHARED, "data", "xquad-r"), str(tmp_path), ["en", "zh"])
    for lang in ("en", "zh"):
        for split in ("train", "test"):
            for name in ("corpus.jsonl", "queries.jsonl", f"qrels/{split}.tsv"):
                path = os.path.join(lang, split, name)
                assert filecmp.cmp(tmp_path / path, os.path.join(XQUAD, path), shallow=False), path


def test_xquad_r_splits_share_no_article():
    for lang in ("en", "ar"):
        train = beir.load_beir(os.path.join(XQUAD, lang, "train"), "train")
        test = beir.load_beir(os.path.join(XQUAD, lang, "test"), "test")
        articles = lambda ds: {d.split("-")[0] for d in ds.corpus}  # noqa: E731
        assert not articles(train) & articles(test)
        assert not set(train.queries) & set(test.queries)
        assert len(test.queries) == 199 and len(train.queries) == 991


def test_groups_validation_names_the_line(tmp_path):
    path = tmp_path / "g.jsonl"
    write_jsonl(
        path, [{"query": "q", "pos": ["p"], "neg": ["n"]}, {"query": "q", "pos": [], "neg": ["n"]}]
    )
    with pytest.raises(DataFormatError, match=r"g\.jsonl:2: 'pos' must be a non-empty list"):
        groups.read_groups(str(path))
    write_jsonl(path, [{"query": "q", "pos": ["p"], "neg": ["n", "m"], "neg_scores": [1.0]}])
    with pytest.raises(DataFormatError, match="neg_scores"):
        groups.read_groups(str(path))


def test_bm25_negatives_exclude_judged_documents(tokenizer):
    ds = beir.load_beir(os.path.join(XQUAD, "en", "train"), "train")
    ids = sorted(ds.corpus)
    retriever = BM25Retriever(ids, [ds.doc_text(d) for d in ids], SubwordAnalyzer(tokenizer))
    mined = groups.mine_groups(ds, num_negatives=5, method="bm25", retriever=retriever)
    assert len(mined) == len(ds.qrels)
    texts = {d: ds.doc_text(d) for d in ds.corpus}
    for g in mined[:50]:
        judged = {texts[d] for d in ds.qrels[g["qid"]]}
        assert len(g["neg"]) == 5 and not judged & set(g["neg"])
        assert g["pos"][0] in judged


def _source(tmp_path, n=10, scores=False):
    rows = []
    for i in range(n):
        row = {
            "qid": f"q{i}",
            "query": f"query {i}",
            "pos": [f"positive {i}"],
            "neg": [f"negative {i} {j}" for j in range(3)],
        }
        if scores:
            row.update(pos_scores=[float(i)], neg_scores=[0.1, 0.2, 0.3])
        rows.append(row)
    write_jsonl(tmp_path / "train.jsonl", rows)
    builder = tfds_groups.prepare_groups(
        {"train": str(tmp_path / "train.jsonl")}, str(tmp_path / "tfds")
    )
    return builder.as_data_source("train")


def test_tfds_builder_writes_array_record_without_tensorflow(tmp_path):
    import tensorflow_datasets as tfds

    source = _source(tmp_path, scores=True)
    assert len(source) == 10
    record = source[0]
    assert isinstance(record["query"], bytes) and len(record["neg"]) == 3 and record["has_scores"]
    builder = tfds_groups.prepare_groups(
        {"train": str(tmp_path / "train.jsonl")}, str(tmp_path / "tfds")
    )
    assert any(".array_record" in f for f in os.listdir(builder.data_dir))
    # Read back through the public data-source API, as a fresh process would.
    via_api = tfds.data_source(
        "querit_groups", data_dir=os.path.dirname(os.path.dirname(builder.data_dir)), split="train"
    )
    assert {r["qid"] for r in via_api} == {f"q{i}".encode() for i in range(10)}
    assert "tensorflow" not in sys.modules
    # A changed input gets a new directory; an unchanged one is reused.
    write_jsonl(tmp_path / "train.jsonl", [{"query": "q", "pos": ["p"], "neg": ["n"]}])
    changed = tfds_groups.prepare_groups(
        {"train": str(tmp_path / "train.jsonl")}, str(tmp_path / "tfds")
    )
    assert changed.data_dir != builder.data_dir and len(changed.as_data_source("train")) == 1


def _pipeline(source, tokenizer, process_index=0, process_count=1, seed=0):
    encoder = PairEncoder(tokenizer, qwen3_pair(), max_length=32, max_query_tokens=8)
    return pipeline.train_dataset(
        source,
        encoder,
        tokenizer.pad_token_id,
        batch_size=2,
        group_size=3,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
    )


def test_pipeline_batches_are_fixed_shape_and_positive_first(tmp_path, tokenizer):
    ds = _pipeline(_source(tmp_path), tokenizer)
    batch = next(pipeline.make_iterator(ds))
    assert batch["input_ids"].shape == (2, 3, 32) and batch["segment_ids"].shape == (2, 3, 32)
    text = tokenizer.decode(batch["input_ids"][0, 0][batch["segment_ids"][0, 0] == 1])
    assert "positive" in text and "query" in text
    assert "negative" in tokenizer.decode(batch["input_ids"][0, 1][batch["segment_ids"][0, 1] == 1])


def test_pipeline_iterator_state_resumes_exactly(tmp_path, tokenizer):
    ds = _pipeline(_source(tmp_path), tokenizer)
    it = pipeline.make_iterator(ds)
    for _ in range(7):  # past one epoch of 10 groups / 2 per batch
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    fresh = pipeline.make_iterator(_pipeline(_source(tmp_path), tokenizer))
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_pipeline_shards_per_process(tmp_path, tokenizer):
    source = _source(tmp_path, n=8)
    seen = []
    for p in range(2):
        ds = _pipeline(source, tokenizer, process_index=p, process_count=2)
        it = pipeline.make_iterator(ds)
        queries = set()
        for _ in range(2):  # one epoch: 4 groups per process, 2 per batch
            b = next(it)
            for row in b["input_ids"][:, 0]:
                queries.add(tokenizer.decode(row[row != tokenizer.pad_token_id]).split("\n")[0])
        seen.append(queries)
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 8


@pytest.mark.parametrize("template", [qwen3_pair(), qwen3_reranker()], ids=lambda t: t.name)
def test_truncation_cuts_only_the_document_and_keeps_the_suffix(tokenizer, template):
    encoder = PairEncoder(tokenizer, template, max_length=160, max_query_tokens=12)
    long_doc = "Berlin ist die Hauptstadt. " * 200
    long_query = "what is the capital city of the federal republic of germany and why " * 3
    (ids,) = encoder([long_query], [long_doc])
    assert len(ids) == 160
    suffix = tokenizer(template.suffix, add_special_tokens=False)["input_ids"]
    assert ids[-len(suffix) :] == suffix
    prefix = tokenizer(template.prefix, add_special_tokens=False)["input_ids"]
    assert ids[: len(prefix) - 1] == prefix[:-1]
    text = tokenizer.decode(ids)
    assert "Berlin" in text and text.count("what is the") == 1
    # Short pairs are exactly the whole rendered string.
    (short,) = encoder(["capital of Germany"], ["Berlin."])
    assert (
        short
        == tokenizer(template.render("capital of Germany", "Berlin."), add_special_tokens=False)[
            "input_ids"
        ]
    )


def test_pad_batch_left_and_right():
    ids, seg, types = pad_batch([[5, 6, 7], [8]], 4, pad_id=0, left=True, types=[[0, 0, 1], [1]])
    assert ids.tolist() == [[0, 5, 6, 7], [0, 0, 0, 8]]
    assert seg.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1]]
    assert types.tolist() == [[0, 0, 0, 1], [0, 0, 0, 1]]
    with pytest.raises(ValueError, match="expected 1..4"):
        pad_batch([[1] * 5], 4, pad_id=0)


def test_miracl_layout_reader(tmp_path):
    from querit_jax.data.sources import load_dataset, parse_source

    root = tmp_path / "miracl"
    for d in ("topics", "qrels", "corpus"):
        os.makedirs(root / d)
    write_jsonl(
        root / "corpus" / "docs-0.jsonl",
        [
            {"docid": "1#0", "title": "東京", "text": "東京は日本の首都です。"},
            {"docid": "2#0", "title": "大阪", "text": "大阪は大きな都市です。"},
        ],
    )
    (root / "topics" / "topics.miracl-v1.0-ja-dev.tsv").write_text(
        "q1\t日本の首都は？\nq2\t大阪とは\n"
    )
    (root / "qrels" / "qrels.miracl-v1.0-ja-dev.tsv").write_text(
        "q1 Q0 1#0 1\nq1 Q0 2#0 0\nq2 Q0 2#0 1\n"
    )
    kind, path, split = parse_source(f"miracl:{root}:ja:dev")
    ds = load_dataset(kind, path, split)
    assert kind == "miracl" and ds.qrels == {"q1": {"1#0": 1, "2#0": 0}, "q2": {"2#0": 1}}
    assert ds.doc_text("1#0").startswith("東京")
    (root / "qrels" / "qrels.miracl-v1.0-ja-dev.tsv").write_text("q1 Q0 9#9 1\n")
    with pytest.raises(
        DataFormatError, match=r"qrels\.miracl-v1\.0-ja-dev\.tsv:1: document id '9#9'"
    ):
        load_dataset(kind, path, split)
    # The miner's docstore reads the same layout, skipping ids repeated across corpus files.
    from querit_jax.data import docstore
    from querit_jax.mining.corpus_index import corpus_paths

    write_jsonl(root / "corpus" / "docs-1.jsonl", [{"docid": "1#0", "text": "copie"}])
    store = docstore.build(corpus_paths(str(root)), str(tmp_path / "store"), strict=False)
    assert len(store) == 2 and store.text(store.row("1#0")).startswith("東京")
    meta = docstore.read_meta(str(tmp_path / "store"))
    assert meta["skipped"] == 1 and "duplicate document id '1#0'" in meta["skipped_reasons"][0]


def _mined_output(tmp_path, lines):
    """A complete mining output: a docstore of 6 documents and one shard of `lines` groups."""
    from querit_jax.data import docstore

    out = tmp_path / "mined"
    write_jsonl(
        tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "text": f"document {i}"} for i in range(6)]
    )
    docstore.build([str(tmp_path / "corpus.jsonl")], str(out / "index" / "docstore"))
    write_jsonl(out / "shard-00000.jsonl", lines)
    shards = {"0": {"file": "shard-00000.jsonl"}}
    (out / "manifest.json").write_text(json.dumps({"complete": True, "shards": shards}))
    return str(out)


def _id_group(i, neg=("d3", "d4", "d5")):
    return {"qid": f"q{i}", "query": f"query {i}", "pos_ids": [f"d{i}"], "neg_ids": list(neg),
            "pos_scores": [1.0], "neg_scores": [0.1 * (j + 1) for j in range(len(neg))],
            "source_doc": f"d{i}"}  # fmt: skip


def test_mined_groups_by_id_join_the_docstore_and_fail_clearly(tmp_path):
    from querit_jax.data import docstore, mined

    out = _mined_output(tmp_path, [_id_group(0), _id_group(1, ("d2", "nope", "d5"))])
    store = mined.open_docstore(out)
    with pytest.raises(DataFormatError, match=r"shard-00000.jsonl:2: document id 'nope' is not in"):
        mined.read_mined(out, store)
    report = ReadReport()
    (g,) = mined.read_mined(out, store, strict=False, report=report)
    assert g["pos_rows"] == [0] and g["neg_rows"] == [3, 4, 5] and report.skipped == 1
    assert mined.with_texts(g, store)["neg"] == ["document 3", "document 4", "document 5"]
    # A user's groups file without texts, a missing or changed docstore: errors that say what to do.
    with pytest.raises(DataFormatError, match="read from their mining output"):
        groups.read_groups(os.path.join(out, "shard-00000.jsonl"))
    with pytest.raises(DataFormatError, match="now holds another corpus"):
        docstore.open_checked(store.location, "0" * 64, "data/manifest.json")
    os.rename(store.location, store.location + ".x")
    with pytest.raises(DataFormatError, match="which is missing"):
        mined.open_docstore(out)
    with pytest.raises(DataFormatError, match=r"data/manifest.json: .* which is missing"):
        docstore.open_checked(store.location, store.sha256, "data/manifest.json")


def test_a_mined_source_is_identified_without_reading_its_index(tmp_path, monkeypatch):
    """A training start names a mining output by its manifest, its shards' stat keys and its
    docstore's recorded corpus hash: no byte of the corpus-sized index is read, and the signature
    changes when a shard is rewritten or the docstore holds another corpus."""
    from querit_jax.data import docstore, mined

    out = _mined_output(tmp_path, [_id_group(0), _id_group(1)])
    bm25 = os.path.join(out, "index", "bm25")
    os.makedirs(bm25)
    open(os.path.join(bm25, "data.csc.index.npy"), "wb").write(b"x" * 4096)
    read = []
    for name in ("open_read", "open_read_raw"):
        real = getattr(storage, name)
        monkeypatch.setattr(storage, name, lambda p, real=real: read.append(p) or real(p))
    first = mined.fingerprint(out)
    opened = {os.path.relpath(p, out) for p in read}
    assert opened == {"manifest.json", os.path.join("index", "docstore", "docstore.json")}
    open(os.path.join(bm25, "data.csc.index.npy"), "wb").write(b"y" * 8192)
    assert mined.fingerprint(out) == first  # the index is not part of it
    shard = os.path.join(out, "shard-00000.jsonl")
    write_jsonl(shard, [_id_group(0), _id_group(2)])
    second = mined.fingerprint(out)
    assert second != first
    write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "text": f"doc {i}"} for i in range(6)])
    store = os.path.join(out, "index", "docstore")
    shutil.rmtree(store)
    docstore.build([str(tmp_path / "corpus.jsonl")], store)
    assert mined.fingerprint(out) not in (first, second)
    os.remove(os.path.join(out, "manifest.json"))
    with pytest.raises(DataFormatError, match="no complete mining run"):
        mined.fingerprint(out)


def test_a_relaunch_finds_its_training_data_without_reading_groups_or_index(tmp_path, monkeypatch):
    """Process 0 of every (re)launch checks the training data is current: the mining output by
    `mined.fingerprint`, the ArrayRecord dataset by the groups file's hash taken while it was
    written. Neither the groups file nor the index is read again, unless the groups file's stat key
    changed: then it is hashed again (the same bytes: the same dataset)."""
    from querit_jax import config_lib
    from querit_jax.training import inputs
    from tests.helpers import load_config

    out = _mined_output(tmp_path, [_id_group(i) for i in range(3)])
    base = load_config("configs/general_relevance.py", "tiny")
    base.data.train, base.data.group_size = out, 4
    data_cfg = config_lib.from_config_dict(base).data
    data_dir = str(tmp_path / "data")
    first = inputs.build_training_data(data_cfg, "unicode", data_dir, lambda *a: None)
    assert first["groups"] == 3
    read, lines = [], []
    for name in ("open_read", "open_read_raw"):
        real = getattr(storage, name)
        monkeypatch.setattr(storage, name, lambda p, real=real: read.append(str(p)) or real(p))
    again = inputs.build_training_data(data_cfg, "unicode", data_dir, lines.append)
    assert again["arrayrecord"] == first["arrayrecord"] and lines[0].startswith("Reusing")
    read_names = {os.path.relpath(p, tmp_path) for p in read}
    assert read_names == {
        os.path.join("mined", "manifest.json"),
        os.path.join("mined", "index", "docstore", "docstore.json"),
        os.path.join("data", "manifest.json"),
    }
    assert first["sha256"] == fingerprint(os.path.join(data_dir, "train.jsonl"))
    os.utime(os.path.join(data_dir, "train.jsonl"), ns=(1, 1))  # touched: hashed again
    read.clear()
    third = inputs.build_training_data(data_cfg, "unicode", data_dir, lambda *a: None)
    assert third["arrayrecord"] == first["arrayrecord"]
    assert os.path.join(data_dir, "train.jsonl") in read
    read.clear()  # its new stat key recorded: the next launch reads it no more
    inputs.build_training_data(data_cfg, "unicode", data_dir, lambda *a: None)
    assert os.path.join(data_dir, "train.jsonl") not in read


def test_pipeline_joins_texts_by_row_into_the_batches_of_a_text_run(
    tmp_path, tokenizer, monkeypatch
):
    """Mined groups stored by docstore row train on exactly the batches of the same groups with
    their texts (one process, and two processes each joining only its own rows)."""
    from querit_jax.data import mined

    out = _mined_output(
        tmp_path, [_id_group(i, ("d3", "d4", "d5", "d0")[i % 2 :]) for i in range(6)]
    )
    store = mined.open_docstore(out)
    rows = mined.read_mined(out, store)
    write_jsonl(tmp_path / "ids.jsonl", [{**g, "store": 0} for g in rows])
    write_jsonl(tmp_path / "texts.jsonl", [mined.with_texts(g, store) for g in rows])
    temp_dirs = []  # TFDS's public-bucket look-up made an empty temp dir per build: not any more
    real_mkdtemp = tempfile.mkdtemp
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: temp_dirs.append(
        real_mkdtemp(*a, **k)) or temp_dirs[-1])  # fmt: skip
    ids, texts = (
        tfds_groups.prepare_groups({"train": str(tmp_path / f"{n}.jsonl")}, str(tmp_path / "tfds"))
        for n in ("ids", "texts")
    )
    assert not [d for d in temp_dirs if d.endswith("tfds")]
    monkeypatch.undo()
    assert list(ids.as_data_source("train")[0]["pos"]) == []  # rows only, no text
    encoder = PairEncoder(tokenizer, qwen3_pair(), max_length=32, max_query_tokens=8)
    for p, count in ((0, 1), (0, 2), (1, 2)):
        got, want = (
            pipeline.make_iterator(pipeline.train_dataset(
                b.as_data_source("train"), encoder, tokenizer.pad_token_id, 2 // count, 3, 0, p,
                count, docstores=stores))
            for b, stores in ((ids, (store.location,)), (texts, ()))
        )  # fmt: skip
        for _ in range(4):
            a, b = next(got), next(want)
            for key in b:
                np.testing.assert_array_equal(a[key], b[key])


def test_tokenizers_load_as_auto_tokenizer_does_and_without_torch():
    """Tokenizers whose config names a `tokenizers`-backed class (the demo's generic one, MiniLM's
    BertTokenizer) load through that class, without transformers' model code, which imports torch
    when it is installed (a fresh process shows it). They give what AutoTokenizer gives."""
    import subprocess

    from transformers import AutoTokenizer

    from querit_jax.models.tokenizers import load_tokenizer_dir
    from tests.conftest import DEMO_TOKENIZER, ROOT

    minilm = os.path.join(SHARED, "models", "all-MiniLM-L6-v2")  # BertTokenizer
    texts = ["Hello world, 你好", "ниже по течению", "a"]
    for name in (DEMO_TOKENIZER, minilm):
        got, want = load_tokenizer_dir(name), AutoTokenizer.from_pretrained(name)
        assert type(got) is type(want) and len(got) == len(want)
        assert got(texts)["input_ids"] == want(texts)["input_ids"]
        assert (got.pad_token_id, got.eos_token_id) == (want.pad_token_id, want.eos_token_id)
    code = (
        "import sys; from querit_jax.models.tokenizers import load_tokenizer_dir; "
        f"a, b = load_tokenizer_dir({DEMO_TOKENIZER!r}), load_tokenizer_dir({minilm!r}); "
        "print(len(a), len(b), 'torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    lengths = [str(len(AutoTokenizer.from_pretrained(n))) for n in (DEMO_TOKENIZER, minilm)]
    assert out.stdout.split() == [*lengths, "False"]
