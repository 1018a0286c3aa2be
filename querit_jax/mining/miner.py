"""Label-free training data: synthetic queries -> filters -> first-stage candidates -> teacher soft
labels.

For a target corpus (a BEIR directory of which only `corpus.jsonl` is read, or a MIRACL root) the
miner:

  1. takes the source documents (all, or a seeded sample), cuts over-long ones (counted); empty ones
     were skipped (counted) when the corpus was read into its docstore (`corpus_index`);
  2. asks the generator for queries (prompt preset or custom text; `<|begin_of_query|>...` markers,
     generations without them are counted as malformed);
  3. filters them: length, copied-from-document, round trip (the source must be in the first
     stage's top-k), normalised dedupe (within the shard here, across shards when the run is
     finalised: `records`);
  4. retrieves candidates with the first stage over the *whole* target corpus and lets the teacher
     score the source document and every candidate;
  5. writes one training group per query (schema: `data.mined`: document ids and teacher scores,
     the texts stay in the docstore); with `dev_share`, the queries of a hashed share of the source
     documents are held out instead (no teacher scores), and become the synthetic dev set
     `<output>/dev/` when the run is finalised (`devset`), next to the synthetic-query diagnostics
     (`diagnostics`).

The teacher may be a weighted mix of models and the first stage's own scores, each min-max
normalised per query (`inference.teacher.TeacherMix`): the first-stage score of every candidate is
kept for it.

Work is cut into shards of `shard_size` source documents, and shard i belongs to process i % P:
every process mines its own shards with its own generator, first stage and teacher on all of its
devices, and records each shard when its file is written. Nothing is shared while mining but the
storage (`mining.output`, local or gs://, seen by every process), except with a dense first stage
split over the processes (`dense_scope="global"`): the processes then mine in rounds, one shard
each, and search the index together. A relaunch skips recorded shards
(even after a SIGKILL: a shard written but not recorded is mined again); SIGTERM finishes and
records the current shard, then exits 0. When every process is done, process 0 dedupes across shards
and writes `manifest.json` once. The result is the same set of groups for any number of processes.
"""

import dataclasses
import json
import os
import resource
import time
import zlib
from collections import Counter

import jax
import numpy as np

from querit_jax import storage
from querit_jax.data.docstore import corpus_stat
from querit_jax.data.io import write_json, write_jsonl
from querit_jax.data.mined import (  # noqa: F401
    DOCSTORE,
    MANIFEST,
    RUN,
    SHARD,
    is_complete,
    shard_files,
)
from querit_jax.data.prompts import make_prompt, parse_queries
from querit_jax.distributed import gather_ints
from querit_jax.errors import MiningError
from querit_jax.loading import load_teacher
from querit_jax.logs import compile_clock
from querit_jax.mining import devset, diagnostics, records
from querit_jax.mining.coordination import Meeting, StopSignal, process
from querit_jax.mining.corpus_index import corpus_paths, index_dir, open_index, searched_together
from querit_jax.mining.devset import DEV_SHARD, is_dev
from querit_jax.mining.filters import QueryFilter, normalize
from querit_jax.mining.generators import build_generator
from querit_jax.mining.negatives import choose_by_bins
from querit_jax.retrieval.topk import COLLECTIVE_WAIT_S

FORMAT_VERSION = 3  # 3: groups name their documents by id (no texts)
# Settings that change where or how fast a run goes, not what it produces.
VOLATILE = (
    "output", "index_dir", "concurrency", "timeout_s", "max_retries", "teacher_batch_size",
    "teacher_pack",
    "endpoint", "endpoints", "generator_batch_size", "generator_check_every", "model_sharding",
    "generator_prompt_min", "generator_prompt_step",
    "dense_part_size", "dense_scope", "real_queries", "diagnostics_sample", "diagnostics_embedder",
)  # fmt: skip


def _settings(cfg) -> dict:
    settings = dataclasses.asdict(cfg)
    for volatile in VOLATILE:
        settings.pop(volatile)
    # As stored in JSON (tuples become lists), so it compares equal to a manifest's copy.
    return json.loads(json.dumps(settings))


def signature(cfg, corpus_sha256: str) -> dict:
    """What makes two runs produce the same shards (a resumed run must match it)."""
    return {"version": FORMAT_VERSION, "settings": _settings(cfg), "corpus_sha256": corpus_sha256}


def source_rows(documents: int, cfg) -> np.ndarray:
    """The docstore rows used as query sources: all in order, or a seeded sample of max_docs."""
    if not cfg.max_docs:
        return np.arange(documents)
    return np.random.default_rng(cfg.seed).permutation(documents)[: cfg.max_docs]


class Miner:
    """One process's share of a mining run: its corpus view, generator, first stage and teacher."""

    def __init__(self, cfg, log=print, devices=None):
        self.cfg, self.log = cfg, log
        self.devices = list(devices) if devices is not None else jax.local_devices()
        self.process, self.processes = process()
        self.stop = StopSignal(log)
        # With an index over every process (searched together, `_mine_in_rounds`) a process must
        # not leave alone: a signal before the rounds is acted on at the first round, by all.
        self.together = searched_together(cfg)
        self.meeting = Meeting(None if self.together else self.stop)
        try:
            index = open_index(cfg, log, self.meeting, self.devices)
        except BaseException:
            self.stop.close()
            raise
        self.store, self.retriever, self.words = index.docstore, index.retriever, index.words
        self.signature = signature(cfg, self.store.sha256)
        self.digest = records.run_digest(self.signature)
        self.sources = source_rows(len(self.store), cfg)
        self.prompt = make_prompt(cfg.prompt, cfg.num_queries or None, cfg.prompt_text or None)
        self.filter = QueryFilter(cfg.min_query_chars, cfg.max_query_chars, cfg.max_copy_overlap)
        self._teacher = self._generator = None

    @property
    def teacher(self):
        if self._teacher is None:
            self._teacher = load_teacher(
                self.cfg.teacher,
                self.cfg.teacher_batch_size,
                self.cfg.teacher_max_length or None,
                devices=self.devices,
                model_sharding=self.cfg.model_sharding,
                pack=self.cfg.teacher_pack,
            )
        return self._teacher

    @property
    def generator(self):
        if self._generator is None:
            self._generator = build_generator(
                self.cfg, self.words, self.prompt.num_queries, self.devices, self.process
            )
        return self._generator

    # ----- one shard
    # -------------------------------------------------------------------------------
    def _source_text(self, text: str, counts: Counter) -> str:
        if len(text) > self.cfg.max_doc_chars:
            counts["truncated_documents"] += 1
            text = text[: self.cfg.max_doc_chars]
        return text

    def mine_shard(self, index: int, rows: np.ndarray) -> tuple[list[dict], list[dict], Counter]:
        """(training groups, held-out dev queries, counts) of one shard of source documents."""
        cfg, counts = self.cfg, Counter()
        rows = [int(r) for r in rows]
        doc_ids = self.store.ids(rows)
        texts = [self._source_text(t, counts) for t in self.store.texts(rows)]
        seeds = [cfg.seed * 1_000_003 + index * cfg.shard_size + i for i in range(len(rows))]
        generations = self.generator.generate([self.prompt.render(t) for t in texts], texts, seeds)
        pending = []
        for row, doc_id, text, gen in zip(rows, doc_ids, texts, generations):
            queries = parse_queries(gen)
            if not queries:
                counts["malformed_generations"] += 1
                continue
            counts["generated_queries"] += len(queries)
            pending += [(row, doc_id, q) for q in queries if self.filter.keep(q, text)]
        hits = self.retriever.search_rows([q for _, _, q in pending], cfg.candidates)
        groups, dev, seen = [], [], set()
        for (row, doc_id, query), (ranked, scores) in zip(pending, hits):
            ranked, scores = ranked.tolist(), np.asarray(scores, np.float32).tolist()
            if cfg.round_trip_k and row not in ranked[: cfg.round_trip_k]:
                counts["dropped_round_trip"] += 1
                continue
            norm = normalize(query)
            if cfg.dedupe and norm in seen:  # across shards: when the run is finalised
                counts["dropped_duplicate"] += 1
                continue
            negatives = [r for r in ranked if r != row]
            if not negatives:
                counts["dropped_no_candidates"] += 1
                continue
            seen.add(norm)
            first = dict(zip(ranked, scores))
            floor = min(scores) if scores else 0.0
            group = {"qid": f"{doc_id}#q{len(groups) + len(dev)}", "query": query,
                     "source_doc": doc_id}  # fmt: skip
            if is_dev(doc_id, cfg.dev_share):
                # Held out for label-free selection: the query, its source and the first stage's
                # whole candidate list with scores (no teacher labels: nothing trains on it).
                dev.append({**group, "candidate_ids": self.store.ids(ranked),
                            "candidate_scores": scores, "_rows": [row, *ranked]})  # fmt: skip
                continue
            group["_rows"] = (row, negatives)
            group["_first"] = [first.get(row, floor)] + [first[r] for r in negatives]
            groups.append(group)
        self._label(groups, counts)
        counts.update({k: v for k, v in self.filter.counts.items() if k != "kept"})
        self.filter.counts.clear()
        counts["groups"] = len(groups)
        counts["dev_queries"] = len(dev)
        return groups, dev, counts

    def _label(self, groups: list[dict], counts: Counter) -> None:
        """Teacher scores for each group's source and candidates; picks the negatives kept."""
        cfg = self.cfg
        pairs_q, pairs_d, sizes, first = [], [], [], []
        for g in groups:
            source, negatives = g["_rows"]
            pairs_q += [g["query"]] * (1 + len(negatives))
            pairs_d += self.store.texts([source, *negatives])
            sizes.append(1 + len(negatives))
            first += g.pop("_first")
        scores = (
            self.teacher.score_groups(pairs_q, pairs_d, sizes, first) if pairs_q else np.zeros(0)
        )
        counts["teacher_pairs"] += len(pairs_q)
        offset = 0
        for g in groups:
            _, negatives = g.pop("_rows")
            s = scores[offset : offset + 1 + len(negatives)]
            offset += 1 + len(negatives)
            neg_scores = s[1:]
            if cfg.score_bins > 1:
                rng = np.random.default_rng(zlib.crc32(g["qid"].encode()))  # same in every process
                pick = choose_by_bins(neg_scores, cfg.num_negatives, cfg.score_bins, rng)
            else:
                pick = list(range(min(cfg.num_negatives, len(negatives))))
            chosen = [negatives[i] for i in pick]
            g.update(
                pos_scores=[float(s[0])],
                neg_scores=[float(neg_scores[i]) for i in pick],
                pos_ids=[g["source_doc"]],
                neg_ids=self.store.ids(chosen),
            )

    # ----- the run
    # ---------------------------------------------------------------------------------
    def _check_run(self) -> None:
        """Process 0 claims `output` for this run (or finds it there); every process checks."""
        output = self.cfg.output
        if self.process == 0:
            run = records.read_run(output, RUN)
            previous = records.read_run(output, MANIFEST)
            if run is None and previous and previous.get("signature") != self.signature:
                run = previous  # an older run's complete output: never mixed with ours
            storage.makedirs(output)
            for stale in storage.glob(output, ".shard-*") + storage.glob(
                storage.join(output, "records"), ".shard-*"
            ):
                storage.remove(stale)  # half-written files of a killed local run
            if run is None:
                write_json(
                    storage.join(output, RUN),
                    {"signature": self.signature, "docstore": self._docstore()},
                )
        self.meeting.wait_for_all("run claimed")
        run = records.read_run(output, RUN)
        if run is None or run.get("signature") != self.signature:
            raise MiningError(
                f"{output} holds shards of a different mining run (settings or corpus changed); "
                "use another mining.output or delete that directory."
            )

    def run(self) -> dict:
        """Mines this process's unrecorded shards; returns the manifest once every process is
        done."""
        cfg = self.cfg
        self._check_run()
        count = -(-len(self.sources) // cfg.shard_size)
        done = records.recorded(cfg.output)
        mine = [i for i in range(self.process, count, self.processes) if i not in done]
        self.log(
            f"process {self.process}/{self.processes}: {len(mine)} of its "
            f"{len(range(self.process, count, self.processes))} shards to mine ({count} in all)"
        )
        if mine:  # models load (and the first programs compile) before the clock starts
            began = time.time()
            self.generator, self.teacher  # noqa: B018
            self.log(f"process {self.process}: generator and teacher loaded in "
                     f"{time.time() - began:.1f} s")  # fmt: skip
        start, mined_docs = time.time(), 0
        with compile_clock() as compiling:  # programs of new shapes compile on first use
            if self.together:
                mined_docs = self._mine_in_rounds(mine, count)
            else:
                for i in mine:
                    mined_docs += self._mine_and_record(i, count)
                    _test_delay()
                    self.stop.check(f"after shard {i + 1}")
        seconds = time.time() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rate = mined_docs / max(seconds, 1e-9)
        self.log(
            f"process {self.process}: mined {len(mine)} shards, {mined_docs} documents in "
            f"{seconds:.1f} s ({rate:.2f} docs/s; {compiling[0]:.1f} s of it compiling programs), "
            f"peak RSS {peak:.0f} MiB"
        )
        self.meeting.wait_for_all("shards mined")
        if self.process == 0:
            manifest = records.finalize(cfg.output, count, self.digest, cfg.dedupe, self._header())
            if cfg.dev_share:
                devset.write_dev(cfg.output, count, self.store, manifest, self.log)
            diagnostics.write_report(cfg, count, self.log)
        self.meeting.wait_for_all("manifest written")
        self.stop.close()
        return records.read_run(cfg.output, MANIFEST)

    def _mine_in_rounds(self, mine: list[int], count: int) -> int:
        """Mining with a first stage split over the processes (`dense_scope="global"`): in each
        round every process mines its next shard, or none, and they search together; a signal to
        any process stops them all at the next round (every finished shard is recorded)."""
        queue, mined_docs = list(mine), 0
        while True:  # flags through the coordination service: a slow peer is waited for, long
            flags = 2 * bool(queue) + (self.stop.received is not None)
            got = gather_ints("mining-rounds", flags, timeout_s=COLLECTIVE_WAIT_S)
            more, stop = any(f >= 2 for f in got), any(f % 2 for f in got)
            if stop:
                self.stop.check("before the next round of shards", anywhere=True)
            if not more:
                return mined_docs
            if queue:
                mined_docs += self._mine_and_record(queue.pop(0), count)
            else:  # this process's part of the round's collective search
                self.retriever.search_rows([], self.cfg.candidates)
            _test_delay()

    def _mine_and_record(self, i: int, count: int) -> int:
        """Mines shard i, writes its file, then its record; returns its number of documents."""
        cfg, began = self.cfg, time.time()
        rows = self.sources[i * cfg.shard_size : (i + 1) * cfg.shard_size]
        groups, dev, counts = self.mine_shard(i, rows)
        if cfg.dev_share:  # before the shard: the record, written last, vouches for both
            write_jsonl(storage.join(cfg.output, DEV_SHARD.format(i)), dev)
        write_jsonl(storage.join(cfg.output, SHARD.format(i)), groups)
        record = {
            "file": SHARD.format(i),
            "documents": len(rows),
            "counts": dict(counts),
            "seconds": round(time.time() - began, 2),
            "process": self.process,
            "run": self.digest,
            "keys": [records.query_key(g["query"]) for g in groups],
        }
        records.write_record(cfg.output, i, record)
        self.log(f"mined shard {i + 1}/{count}: {counts['groups']} groups ({dict(counts)})")
        return len(rows)

    def _docstore(self) -> str:
        """Where the groups' texts are (`data.mined`): relative to the output when inside it."""
        if not self.cfg.index_dir:
            return DOCSTORE
        return storage.absolute(storage.join(self.cfg.index_dir, "docstore"))

    def _header(self) -> dict:
        cfg, meta = self.cfg, self.store.meta
        return {
            "signature": self.signature,
            "inputs": self._inputs(),
            "corpus": {**meta["corpus"], "documents": len(self.store)},
            "index_dir": index_dir(cfg),
            "docstore": self._docstore(),
            "processes": self.processes,
            "source_documents": len(self.sources),
            "skipped_documents": meta["skipped"],
            "skipped_reasons": meta["skipped_reasons"],
        }

    def _inputs(self) -> dict:
        cfg = self.cfg
        return {
            "target": storage.absolute(cfg.target),
            "generator": {
                "kind": cfg.generator,
                "model": cfg.generator_model,
                "endpoints": list(cfg.endpoint_list()),
            },
            "prompt": self.prompt.to_dict(),
            "retriever": {
                "first_stage": cfg.first_stage,
                "bm25_tokenizer": cfg.bm25_tokenizer,
                "candidates": cfg.candidates,
            },
            "teacher": self.teacher.describe(),
            "filters": {
                "min_chars": cfg.min_query_chars,
                "max_chars": cfg.max_query_chars,
                "max_copy_overlap": cfg.max_copy_overlap,
                "round_trip_k": cfg.round_trip_k,
                "dedupe": cfg.dedupe,
            },
        }


def _test_delay() -> None:
    if os.environ.get("QUERIT_TEST_SHARD_DELAY"):  # testing hook: a kill lands mid-run
        time.sleep(float(os.environ["QUERIT_TEST_SHARD_DELAY"]))


def up_to_date(cfg) -> bool:
    """Whether `cfg.output` holds a complete run of exactly this configuration and corpus (the
    corpus files checked by their stat keys: nothing is hashed, no model loaded)."""
    manifest = records.read_run(cfg.output, MANIFEST)
    if not manifest or not manifest.get("complete"):
        return False
    sig = manifest.get("signature", {})
    return (
        sig.get("version") == FORMAT_VERSION
        and sig.get("settings") == _settings(cfg)
        and manifest.get("corpus", {}).get("files") == corpus_stat(corpus_paths(cfg.target))
    )


def ensure_mined(cfg, log=print, devices=None) -> None:
    """Mines `cfg.output` unless it already holds this exact run (a different run is an error).

    Every process takes part (its shards, on its devices); process 0 decides whether there is
    anything to do, so all processes agree.
    """
    if Meeting().decide("up to date", lambda: "1" if up_to_date(cfg) else "0") == "1":
        return
    mine(cfg, log, devices)


def mine(cfg, log=print, devices=None) -> dict:
    miner = Miner(cfg, log, devices)
    try:
        return miner.run()
    finally:
        miner.stop.close()  # the signal handlers in place before mining
