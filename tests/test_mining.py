"""The miner: output schema and manifest, filters and counted skips, two processes mining like one,
resumption after SIGKILL and SIGTERM, cross-shard dedupe, mining into a bucket."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from querit_jax import config_lib
from querit_jax.data import groups, mined
from querit_jax.data.mined import shard_files
from querit_jax.errors import CheckpointError, DataFormatError
from querit_jax.mining import miner
from querit_jax.mining.filters import QueryFilter, longest_common_run, normalize
from querit_jax.mining.negatives import choose_by_bins
from tests.conftest import XQUAD, make_hf_qwen3, write_jsonl
from tests.helpers import ROOT, load_config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return make_hf_qwen3(str(tmp_path_factory.mktemp("teacher") / "hf"), "seq_cls", std=0.05)


def _cfg(tmp_path, teacher, **overrides):
    base = config_lib.mining_from_config_dict(load_config("configs/mine_beir.py", "demo"))
    fields = dict(
        target=os.path.join(XQUAD, "es", "test"),
        output=str(tmp_path / "mined"),
        teacher=teacher,
        max_docs=40,
        shard_size=8,
        candidates=8,
        round_trip_k=8,
        num_negatives=3,
    )
    return config_lib.validate_mining(dataclasses.replace(base, **{**fields, **overrides}))


def test_mined_groups_follow_the_schema_and_the_manifest_counts(tmp_path, teacher):
    manifest = miner.mine(_cfg(tmp_path, teacher, score_bins=4), log=lambda *a: None)
    files = shard_files(str(tmp_path / "mined"))
    assert len(files) == 5 and manifest["complete"]
    rows = [g for f in files for g in groups.read_groups(f, ids=True)]  # validates the schema
    assert len(rows) == manifest["totals"]["groups"] > 50
    for g in rows[:20]:
        assert len(g["neg_ids"]) == 3 == len(g["neg_scores"]) and len(g["pos_scores"]) == 1
        assert g["source_doc"] not in g["neg_ids"] and g["pos_ids"] == [g["source_doc"]]
        assert "pos" not in g and "neg" not in g  # ids only: the texts live in the docstore
    store = mined.open_docstore(str(tmp_path / "mined"))
    assert manifest["docstore"] == "index/docstore" and store.location.endswith("index/docstore")
    joined = mined.with_texts(rows[0], store)
    assert joined["pos"] == [store.text(store.row(rows[0]["source_doc"]))] and joined["neg"][0]
    totals = manifest["totals"]
    assert totals["generated_queries"] == totals["groups"] + sum(
        v for k, v in totals.items() if k.startswith("dropped")
    )
    assert (
        manifest["inputs"]["teacher"]["kind"] == "reranker"
        and manifest["inputs"]["prompt"]["name"] == "web_search"
    )
    assert manifest["signature"]["corpus_sha256"]
    assert len({normalize(g["query"]) for g in rows}) == len(rows)  # deduped across shards
    # Reuse: a mined directory is a training source.
    from querit_jax.data.sources import parse_source

    assert parse_source(str(tmp_path / "mined"))[0] == "mined"


def test_bad_documents_are_counted_and_a_missing_teacher_is_a_clear_error(tmp_path, teacher):
    target = tmp_path / "target"
    os.makedirs(target / "qrels")
    write_jsonl(
        target / "corpus.jsonl",
        [
            {"_id": "d1", "text": "Berlin is the capital of Germany and its largest city."},
            {"_id": "d2", "text": ""},  # empty: skipped, counted
            {"_id": "d3", "text": "!!! ??? ..."},  # no words: the generator returns no marked query
            {
                "_id": "d4",
                "text": "Paris is the capital of France. " * 400,
            },  # longer than max_doc_chars
            {"_id": "d5", "text": "Rome is the capital of Italy, founded long ago."},
        ],
    )
    cfg = _cfg(
        tmp_path,
        teacher,
        target=str(target),
        max_docs=0,
        shard_size=10,
        candidates=3,
        round_trip_k=3,
        num_negatives=2,
        max_doc_chars=500,
    )
    manifest = miner.mine(cfg, log=lambda *a: None)
    assert manifest["skipped_documents"] == 1 and "d2" in manifest["skipped_reasons"][0]
    assert manifest["totals"]["malformed_generations"] == 1
    assert manifest["totals"]["truncated_documents"] == 1
    with pytest.raises(CheckpointError, match="no such directory"):
        miner.mine(
            dataclasses.replace(cfg, teacher=str(tmp_path / "nope"), output=str(tmp_path / "o2"))
        )
    with pytest.raises(miner.MiningError, match="different mining run"):
        miner.mine(dataclasses.replace(cfg, num_negatives=1))


def test_filters_and_score_bins():
    f = QueryFilter(min_chars=5, max_chars=40, max_copy_overlap=0.8)
    doc = "The quick brown fox jumps over the lazy dog"
    assert not f.keep("fox", doc) and not f.keep("the quick brown fox jumps", doc)
    assert f.keep("which animal jumps over a dog", doc)
    assert f.counts == {"dropped_length": 1, "dropped_copied": 1, "kept": 1}
    assert longest_common_run(["a", "b", "c"], ["x", "a", "b", "y", "c"]) == 2
    assert normalize("  Où est-il ?") == "où est il"
    import numpy as np

    scores = np.array([0.0, 0.1, 0.2, 0.5, 0.9, 1.0, 0.95, 0.05])
    picked = choose_by_bins(scores, 4, 4, np.random.default_rng(0))
    assert len(picked) == 4 and len({int(min(3, s * 4)) for s in scores[picked]}) >= 3


def _groups(output):
    """The mined groups as a set (scores rounded: runs on other device counts may differ in the
    last bits)."""
    out = set()
    for path in shard_files(output):
        for g in groups.read_groups(path, ids=True):
            g = {**g, "pos_scores": [round(x, 4) for x in g["pos_scores"]]}
            g["neg_scores"] = [round(x, 4) for x in g["neg_scores"]]
            out.add(json.dumps(g, sort_keys=True, ensure_ascii=False))
    return out


def _process_pid(launcher_pid: int, process_id: int) -> int:
    """The pid of the launcher's child with QUERIT_PROCESS_ID=process_id (read from /proc)."""
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == launcher_pid and f"QUERIT_PROCESS_ID={process_id}".encode() in env:
            return int(pid)
    raise AssertionError(f"no process {process_id} under launcher {launcher_pid}")


def _record_times(output):
    d = os.path.join(output, "records")
    return {n: os.stat(os.path.join(d, n)).st_mtime_ns for n in os.listdir(d) if n[0] != "."}


def test_two_processes_mine_what_one_does_and_a_killed_process_resumes(
    tmp_path, teacher, monkeypatch
):
    """launch/local.py, 2 processes x 1 device: mid-run process 1 is killed -9 and process 0 gets
    SIGTERM (it records its shard and exits 0); the relaunch mines only what is not recorded (no
    shard twice). The result equals, as a set of groups, one process mining into a bucket (gs://,
    the emulator). The corpus holds every document twice (other ids, later shards), so queries
    repeat across shards and the cross-shard dedupe is exercised."""
    import jax

    from tests import gcs

    rows = [json.loads(x) for x in open(os.path.join(XQUAD, "es", "test", "corpus.jsonl"))][:56]
    target = tmp_path / "target"
    os.makedirs(target)
    write_jsonl(target / "corpus.jsonl", rows + [{**r, "_id": r["_id"] + "-copy"} for r in rows])
    settings = dict(
        target=str(target), teacher=teacher, max_docs=0, shard_size=8, candidates=6,
        round_trip_k=6, num_negatives=2, teacher_max_length=128, teacher_batch_size=32,
        heuristic_min_len=3, heuristic_max_len=3,
    )  # fmt: skip
    monkeypatch.setenv("QUERIT_JAX_CACHE", str(tmp_path / "cache"))
    bucket = gcs.start()
    one = _cfg(tmp_path, **settings, output=f"{bucket}/{tmp_path.name}/one")
    manifest = miner.mine(one, log=lambda *a: None, devices=jax.devices()[:1])
    assert manifest["complete"] and manifest["totals"]["dropped_duplicate"] > 0
    assert any(e["file"].endswith(".dedup.jsonl") for e in manifest["shards"].values())

    out = str(tmp_path / "two")
    args = [
        sys.executable,
        "launch/local.py",
        "--num_processes=2",
        "--devices_per_process=1",
        "--timeout=400",
        "--",
        "-m",
        "querit_jax.mine",
        "--config=configs/mine_beir.py:demo",
        *(f"--config.mining.{k}={v}" for k, v in {**settings, "output": out}.items()),
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "QUERIT_TEST_SHARD_DELAY": "0.3"}
    # The relaunch loads the programs the first launch compiled.
    env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jit"))
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.3")
    launcher = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )

    def by_process(p):
        d = os.path.join(out, "records")
        names = [n for n in os.listdir(d) if n[0] != "."] if os.path.isdir(d) else []
        return [n for n in names if int(n[6:11]) % 2 == p]

    deadline = time.time() + 300
    while not by_process(1) and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    # Process 1 dies; process 0 is preempted (the launcher, seeing process 1 dead, sends process 0
    # SIGTERM too, and SIGKILL only after --grace_s).
    survivor = _process_pid(launcher.pid, 0)
    os.kill(_process_pid(launcher.pid, 1), signal.SIGKILL)
    os.kill(survivor, signal.SIGTERM)
    first, _ = launcher.communicate(timeout=120)
    recorded = _record_times(out)
    assert 1 <= len(by_process(1)) < 7 and len(recorded) < 14, first[-3000:]
    assert re.search(r"^\[0\] .*SIGTERM received: stopping", first, re.M), first[-3000:]
    assert "[launch] exit codes: 0 -9" in first, first[-3000:]  # 0 finished its shard, exited 0

    launcher = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    second = launcher.stdout
    assert launcher.returncode == 0, second[-3000:]
    assert {n: t for n, t in _record_times(out).items() if n in recorded} == recorded
    assert len(re.findall(r"mined shard \d+/14", second)) == 14 - len(recorded)
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert [
        e["process"] for _, e in sorted(manifest["shards"].items(), key=lambda x: int(x[0]))
    ] == [i % 2 for i in range(14)]  # shard i belongs to process i % 2
    assert manifest["totals"] == miner.records.read_run(one.output, "manifest.json")["totals"]
    assert _groups(out) == _groups(one.output)
    assert re.search(r"^\[1\] .*process 1: mined \d+ shards", second, re.M)


def test_a_dense_first_stage_split_over_two_processes_mines_what_one_process_does(
    tmp_path, teacher, monkeypatch
):
    """An embedder first stage with `dense_scope="global"`, 2 processes x 2 devices: each process
    reads and holds only its devices' rows of the index (process 1: the last 214 of 1238) and
    they mine in rounds, searching together (process 1 has no shard in the last round). SIGTERM to
    process 1 stops both at the next round, exit codes 0 0; the relaunch mines the rest. The
    groups equal one process's with the whole index on its devices."""
    import jax

    from tests.fixtures import make_hf_encoder

    embedder, _, _ = make_hf_encoder(str(tmp_path / "embedder"), "bert", "base")
    rows = []  # six languages' sentences: 1238 documents
    for lang in ("es", "de", "en", "ru", "tr", "vi"):
        with open(os.path.join(XQUAD, lang, "test", "corpus.jsonl")) as f:
            rows += [{**json.loads(x), "_id": f"{lang}-{json.loads(x)['_id']}"} for x in f]
    os.makedirs(tmp_path / "target")
    write_jsonl(tmp_path / "target" / "corpus.jsonl", rows)
    settings = dict(
        target=str(tmp_path / "target"), teacher=teacher, first_stage=embedder, max_docs=40,
        shard_size=8, candidates=6, round_trip_k=0, num_negatives=2, dense_part_size=100,
        teacher_max_length=128, teacher_batch_size=32,
    )  # fmt: skip
    monkeypatch.setenv("QUERIT_JAX_CACHE", str(tmp_path / "cache"))
    one = _cfg(tmp_path, **settings, output=str(tmp_path / "one"))
    assert miner.mine(one, log=lambda *a: None, devices=jax.devices()[:2])["complete"]

    out = str(tmp_path / "two")
    args = [
        sys.executable, "launch/local.py", "--num_processes=2", "--devices_per_process=2",
        "--timeout=400", "--", "-m", "querit_jax.mine", "--config=configs/mine_beir.py:demo",
        *(f"--config.mining.{k}={v}" for k, v in {**settings, "output": out}.items()),
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "QUERIT_TEST_SHARD_DELAY": "1"}
    launcher = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    record_1 = os.path.join(out, "records", "shard-00001.json")
    deadline = time.time() + 300
    while not os.path.exists(record_1) and launcher.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    assert launcher.poll() is None, launcher.communicate()[0][-3000:]
    os.kill(_process_pid(launcher.pid, 1), signal.SIGTERM)
    first, _ = launcher.communicate(timeout=120)
    assert "[launch] exit codes: 0 0" in first, first[-3000:]
    assert re.search(r"^\[0\] .*A stop signal to another process received: stopping", first, re.M)
    assert re.search(r"^\[1\] .*SIGTERM received: stopping", first, re.M), first[-3000:]
    # Process 0's devices hold rows 0-1024 (512 each), process 1's the rest; parts of 100 rows.
    n = len(rows)
    for p, span in enumerate([f"rows 0-1024 of {n}", f"rows 1024-{n} of {n}"]):
        parts = ("0-10", "10-12")[p]
        line = rf"^\[{p}\] .*dense index \(global\): {span} on this .*, read from parts {parts} of"
        assert re.search(line, first, re.M), first[-3000:]
    recorded = _record_times(out)
    assert 2 <= len(recorded) < 5, first[-3000:]

    again = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0, again.stdout[-3000:]
    assert {n: t for n, t in _record_times(out).items() if n in recorded} == recorded
    assert len(re.findall(r"mined shard \d+/5", again.stdout)) == 5 - len(recorded)
    assert _groups(out) == _groups(one.output) and len(_groups(out)) > 20


def test_cross_shard_dedupe_keeps_the_first_in_shard_order(tmp_path):
    import numpy as np

    from querit_jax.data import docstore
    from querit_jax.mining import devset, records

    out = str(tmp_path)
    queries = [["a", "b"], ["B!", "c"], ["a", "d", "c"]]  # "B!" normalises to "b"
    for i, qs in enumerate(queries):
        write_jsonl(tmp_path / f"shard-{i:05d}.jsonl", [{"query": q} for q in qs])
        records.write_record(out, i, {
            "file": f"shard-{i:05d}.jsonl", "documents": 1, "counts": {"groups": len(qs)},
            "seconds": 0, "process": i % 2, "run": "r", "keys": [records.query_key(q) for q in qs],
        })  # fmt: skip
    with pytest.raises(miner.MiningError, match="recorded by another mining run"):
        records.finalize(out, 3, "other", True, {})
    manifest = records.finalize(out, 3, "r", True, {"x": 1})
    kept = [[json.loads(x)["query"] for x in open(p)] for p in shard_files(out)]
    assert kept == [["a", "b"], ["c"], ["d"]]
    assert manifest["totals"] == {"groups": 4, "dropped_duplicate": 3} and manifest["x"] == 1
    assert [e["file"] for e in manifest["shards"].values()] == [
        "shard-00000.jsonl", "shard-00001.dedup.jsonl", "shard-00002.dedup.jsonl"
    ]  # fmt: skip
    # Keys are read as one uint64 array per record; the dev set drops the queries training has
    # ("D!" is "d") and repeats of its own.
    assert records.read_records(out, [2])[2]["keys"].dtype == np.uint64
    records.write_record(str(tmp_path / "old"), 0, {"file": "shard-00000.jsonl"})  # no keys
    with pytest.raises(miner.MiningError, match="shard-00000.json: the shard record has no query"):
        records.read_records(str(tmp_path / "old"), [0])
    corpus = [{"_id": f"s{i}", "text": f"text {i}"} for i in range(3)]
    write_jsonl(tmp_path / "corpus.jsonl", corpus)
    store = docstore.build([str(tmp_path / "corpus.jsonl")], str(tmp_path / "store"))
    dev = [["D!", "new one"], ["New one!"], ["fresh"]]
    for i, qs in enumerate(dev):
        write_jsonl(tmp_path / devset.DEV_SHARD.format(i), [
            {"qid": f"q{i}{j}", "query": q, "source_doc": f"s{i}", "candidate_ids": [f"s{i}"],
             "candidate_scores": [1.0], "_rows": [i]} for j, q in enumerate(qs)
        ])  # fmt: skip
    info = devset.write_dev(out, 3, store, manifest, log=lambda *a: None)
    got = [json.loads(x)["text"] for x in open(tmp_path / "dev" / "queries.jsonl")]
    assert got == ["new one", "fresh"] and info["dropped_repeats"] == 2
    os.remove(tmp_path / "records" / "shard-00002.json")
    with pytest.raises(miner.MiningError, match=r"shards \[2\] are not recorded"):
        records.finalize(out, 3, "r", True, {})


def test_distillation_trains_on_the_mined_teacher_scores_and_texts_joined_by_id(
    tmp_path, teacher, monkeypatch
):
    import jax
    import numpy as np

    from querit_jax.training import trainer

    monkeypatch.chdir(ROOT)
    mining = _cfg(tmp_path, teacher, max_docs=16)
    miner.mine(mining, log=lambda *a: None)
    rows = [g for f in shard_files(mining.output) for g in groups.read_groups(f, ids=True)]
    mined_scores = np.array([s for g in rows for s in g["pos_scores"] + g["neg_scores"]])
    base = load_config("configs/general_relevance.py", "tiny")
    base.data.train, base.data.group_size, base.train.loss = mining.output, 4, "kl"
    base.train.num_steps, base.train.log_every, base.eval.datasets = 2, 1, ""
    cfg = config_lib.from_config_dict(base)
    session = trainer.setup(cfg, str(tmp_path / "run"), devices=jax.devices()[:1])
    batch = next(session.data_iter)
    assert batch["has_teacher"].all()
    teacher_scores = batch["teacher"].ravel()
    assert np.abs(teacher_scores).max() > 0
    assert np.isin(teacher_scores, mined_scores.astype(np.float32)).all()  # the mined labels
    trainer.run(cfg, str(tmp_path / "run2"), devices=jax.devices()[:1])
    logged = [json.loads(x) for x in open(tmp_path / "run2" / "metrics.jsonl")]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2]
    assert all(np.isfinite(r["loss"]) for r in logged if "loss" in r)
    # The training data keeps ids and docstore rows (no texts); the pipeline joins the texts, so a
    # run on the same groups carrying their texts trains on the same batches: the same losses.
    data = [json.loads(x) for x in open(tmp_path / "run2" / "data" / "train.jsonl")]
    assert all("pos" not in g and "neg" not in g and g["store"] == 0 for g in data)
    store = mined.open_docstore(mining.output)
    manifest = json.loads((tmp_path / "run2" / "data" / "manifest.json").read_text())
    assert manifest["docstores"] == [{"location": store.location, "sha256": store.sha256}]
    texts = [mined.with_texts(g, store) for g in rows]
    keep = ("qid", "query", "pos", "neg", "pos_scores", "neg_scores")
    write_jsonl(tmp_path / "texts.jsonl", [{k: g[k] for k in keep} for g in texts])
    base.data.train = str(tmp_path / "texts.jsonl")
    trainer.run(
        config_lib.from_config_dict(base), str(tmp_path / "run4"), devices=jax.devices()[:1]
    )
    with_texts = [json.loads(x) for x in open(tmp_path / "run4" / "metrics.jsonl")]
    for key in ("loss", "grad_norm"):
        got = [r[key] for r in logged if "loss" in r]
        assert got == [r[key] for r in with_texts if "loss" in r], key
    os.rename(store.location, store.location + ".moved")  # the docstore gone: a clear error
    with pytest.raises(DataFormatError, match=r"docstore .*index/docstore, which is missing"):
        trainer.setup(cfg, str(tmp_path / "run2"), devices=jax.devices()[:1])
    os.rename(store.location + ".moved", store.location)

    write_jsonl(
        tmp_path / "plain.jsonl", [{k: g[k] for k in ("query", "pos", "neg")} for g in texts]
    )
    base.data.train = str(tmp_path / "plain.jsonl")
    with pytest.raises(config_lib.ConfigError, match="learns from teacher scores"):
        trainer.setup(
            config_lib.from_config_dict(base), str(tmp_path / "run3"), devices=jax.devices()[:1]
        )


def test_the_compile_clock_counts_only_programs_compiled_inside():
    """The miner reports how much of its mining time went to compiling programs (a fixed cost per
    process) with `compile_clock`: a new program counts, a cached call and work outside do not."""
    import jax
    import jax.numpy as jnp

    from querit_jax.logs import compile_clock

    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)
    with compile_clock() as seconds:
        f(jnp.ones(7)).block_until_ready()
        first = seconds[0]
        f(jnp.ones(7)).block_until_ready()  # the same shape: no compile
    jax.jit(lambda x: x * 2.0)(jnp.ones(3)).block_until_ready()  # after the block
    assert first > 0 and seconds[0] == first


def test_meetings_of_one_name_in_one_launch_use_keys_of_their_own(monkeypatch):
    """Several mining runs in one launch (the loop mines each target) meet under the same names;
    the coordination service refuses to overwrite a key (`allow_overwrite=False`), so each meeting
    numbers its keys: the second run's meetings must not reuse the first's."""
    from querit_jax.mining import coordination

    class Store:  # the coordination service's key-value store, seen by process 0 of 2
        def __init__(self):
            self.kv = {}

        def key_value_set(self, key, value):
            if key in self.kv:
                raise RuntimeError(f"ALREADY_EXISTS: {key}")
            self.kv[key] = value
            if key.endswith("/0"):  # process 1 reaches the same meeting
                self.kv[key[:-1] + "1"] = value

        def key_value_dir_get(self, prefix):
            return [(k, v) for k, v in self.kv.items() if k.startswith(prefix)]

    store = Store()
    monkeypatch.setattr(coordination, "_client", lambda: store)
    monkeypatch.setattr(coordination, "process", lambda: (0, 2))
    meeting = coordination.Meeting(poll_s=0)
    for _ in range(2):  # two runs in one launch
        meeting.wait_for_all("index built")
        assert meeting.decide("up to date", lambda: "0") == "0"
    assert len(store.kv) == 6  # 2 keys per wait, 1 per decision, for each run
