"""Mining at corpus scale: docs/s and peak memory per process, index build, size of the mined data.

    python benchmarks/mining_scale.py --docs=100000 [--processes=1,2] [--max_docs=2000] [--pin]
        [--text_scale=1] [--rounds=1]

1. A synthetic corpus of `--docs` documents with XQuAD-R's length mix (70% sentence-length, 30%
   paragraph-length documents, lengths drawn from the 8 languages' sentences and paragraphs; words
   drawn from each language's XQuAD-R unigram distribution, plus 3% Zipf-distributed rare words so
   the vocabulary keeps growing as in a real corpus) is written once under `--workdir`.
   `--text_scale=F` makes every document F times as long (same ids, same number of documents): the
   mined data's size must not change with it (groups name their documents by id; the texts live
   once, in the docstore).
2. The corpus index (docstore, bm25s index, word statistics) is built once, in its own process
   (`mining.corpus_index.build_missing`): wall time, peak RSS, size on disk.
3. Mining with the heuristic generator, BM25 candidates (10, round trip 10) and a tiny random
   Qwen3 reranker as teacher (128 tokens per pair) (tests/conftest.py's `make_hf_qwen3` shape), over
   `--max_docs` sampled source documents (0 = all; the index always covers every document), with 1
   process and with P processes x 1 device (launch/local.py), each run to its own output over the
   same index. Reported per process: docs/s (documents mined / mining seconds, models loaded
   beforehand), the seconds of it spent compiling programs (of shapes met while mining: a fixed cost
   per process, minutes at most in a run of hours) and peak RSS (VmHWM); per run: aggregate docs/s
   (documents / slowest process) and the speed-up over 1 process, also without each process's
   compile time ("steady": what a long run's throughput scales by); and the mined data's size on
   disk (shard files + records + manifest; the index apart). Right after each run, a CPU-bound
   spin loop run by 1 and by P processes says how much parallel work the (shared) machine gave P
   processes at that time: the ceiling for the speed-up. `--pin` runs each process on its own core
   with one XLA thread (taskset), so the speed-up of P processes shows the division of work apart
   from one process's use of several cores.
   `--rounds=R` repeats the runs R times, the process counts interleaved; each round's speed-up is
   over that round's first run, and the median per process count is reported.

Prints one JSON object and a Markdown table row per run. Not run in CI.
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
XQUAD = os.path.join(ROOT, "data", "xquad_r")
TOKENIZER = os.path.join(ROOT, "data", "tokenizers", "xquad_r_bpe")
_WORD = re.compile(r"\w+", re.UNICODE)
# Reads its own peak RSS (VmHWM: this process's address space only) at exit.
_PEAK = (
    "import atexit, re, sys\n"
    "def peak():\n"
    "    s = open('/proc/self/status').read()\n"
    "    print('PEAK_RSS_KB', re.search(r'VmHWM:\\s+(\\d+)', s).group(1), file=sys.stderr)\n"
    "atexit.register(peak)\n"
)


def language_stats():
    """Per language: (words, probabilities); and the sentence / paragraph lengths in words."""
    vocab, sentences, paragraphs = {}, [], {}
    for lang in sorted(os.listdir(XQUAD)):
        if not os.path.isdir(os.path.join(XQUAD, lang)):
            continue
        counts = {}
        for split in ("train", "test"):
            path = os.path.join(XQUAD, lang, split, "corpus.jsonl")
            for line in open(path, encoding="utf-8"):
                doc = json.loads(line)
                words = list(doc["text"]) if lang == "zh" else _WORD.findall(doc["text"])
                words = [w for w in words if w.strip()]
                for w in words:
                    counts[w] = counts.get(w, 0) + 1
                sentences.append(len(words))
                key = (lang, split, doc["_id"].rsplit("-", 1)[0])
                paragraphs[key] = paragraphs.get(key, 0) + len(words)
        words = sorted(counts)
        p = np.array([counts[w] for w in words], np.float64)
        vocab[lang] = (np.array(words, dtype=object), p / p.sum())
    return vocab, np.array(sentences), np.array(list(paragraphs.values()))


def write_corpus(
    path: str, n: int, seed: int = 0, chunk: int = 20_000, text_scale: float = 1.0
) -> None:
    if os.path.exists(path + ".done"):
        return
    vocab, sentences, paragraphs = language_stats()
    langs = sorted(vocab)
    cdfs = {lang: np.cumsum(vocab[lang][1]) for lang in langs}
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            lengths = np.maximum(
                1,
                np.where(rng.random(m) < 0.7, rng.choice(sentences, m), rng.choice(paragraphs, m)),
            )
            lengths = np.maximum(1, np.round(lengths * text_scale)).astype(np.int64)
            lang_of = rng.integers(0, len(langs), m)
            docs = [None] * m
            for li, lang in enumerate(langs):
                which = np.flatnonzero(lang_of == li)
                total = int(lengths[which].sum())
                draws = np.searchsorted(cdfs[lang], rng.random(total) * cdfs[lang][-1])
                words = vocab[lang][0][np.minimum(draws, len(cdfs[lang]) - 1)]
                rare = np.flatnonzero(rng.random(total) < 0.03)  # a Zipf tail: vocabulary grows
                words[rare] = [
                    f"x{np.base_repr(int(z) % 10**9, 36).lower()}" for z in rng.zipf(1.3, len(rare))
                ]
                glue = "" if lang == "zh" else " "
                bounds = np.concatenate([[0], np.cumsum(lengths[which])])
                for k, i in enumerate(which):
                    docs[i] = glue.join(words[bounds[k] : bounds[k + 1]])
            for i, text in enumerate(docs):
                doc = {"_id": f"doc{start + i}", "title": "", "text": text}
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    open(path + ".done", "w").close()


def make_teacher(path: str) -> str:
    if os.path.exists(os.path.join(path, "config.json")):
        return path
    import torch
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(TOKENIZER)
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(
        vocab_size=len(tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_labels=1,
        pad_token_id=tok.pad_token_id, rope_theta=10000.0, max_position_embeddings=512,
    )  # fmt: skip
    model = transformers.Qwen3ForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def du(path: str, skip: str = "") -> int:
    total = 0
    for d, _, files in os.walk(path):
        if skip and os.path.abspath(d).startswith(os.path.abspath(skip)):
            continue
        total += sum(os.path.getsize(os.path.join(d, f)) for f in files)
    return total


# configs/mine_beir.py:demo plus the mining fields it may not list yet (index_dir, model_sharding).
_CONFIG = """
import importlib.util
spec = importlib.util.spec_from_file_location("mine_beir", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)


def get_config(arg=None):
    c = module.get_config("demo")
    for name, value in (("index_dir", ""), ("model_sharding", "fsdp")):
        if name not in c.mining:
            setattr(c.mining, name, value)
    return c
"""


def _scale(args) -> str:
    """The corpus's (and its index's) name suffix for `--text_scale`."""
    return "" if args.text_scale == 1 else f"-x{args.text_scale:g}"


def config_file(args) -> str:
    path = os.path.join(args.workdir, "mine_scale_config.py")
    with open(path, "w") as f:
        f.write(_CONFIG.format(path=os.path.join(ROOT, "configs", "mine_beir.py")))
    return path


def overrides(args, corpus_dir, teacher, output) -> list[str]:
    fields = dict(
        target=corpus_dir,
        output=output,
        index_dir=os.path.join(args.workdir, f"index-{args.docs}{_scale(args)}"),
        teacher=teacher,
        max_docs=args.max_docs,
        shard_size=args.shard_size,
        candidates=10,
        round_trip_k=10,
        num_negatives=7,
        teacher_max_length=128,
        teacher_batch_size=128,
        model_sharding="dp",
    )
    return [f"--config.mining.{k}={v}" for k, v in fields.items()]


def build_index(args, corpus_dir, teacher) -> dict:
    code = _PEAK + (
        "import sys, time\n"
        "import importlib.util\n"
        "from querit_jax import config_lib\n"
        "from querit_jax.mining import corpus_index\n"
        f"spec = importlib.util.spec_from_file_location('c', {config_file(args)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "c = module.get_config()\n"
        "for kv in sys.argv[1:]:\n"
        "    k, v = kv[len('--config.mining.'):].split('=', 1)\n"
        "    setattr(c.mining, k, type(getattr(c.mining, k))(v))\n"
        "cfg = config_lib.mining_from_config_dict(c)\n"
        "t = time.time()\n"
        "corpus_index.build_missing(cfg, print)\n"
        "print('BUILD_SECONDS', time.time() - t)\n"
    )
    out = os.path.join(args.workdir, "unused")
    index = os.path.join(args.workdir, f"index-{args.docs}{_scale(args)}")
    reused = os.path.isdir(index)  # built by an earlier run: its build figures are not measured
    proc = subprocess.run(
        [sys.executable, "-c", code, *overrides(args, corpus_dir, teacher, out)],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    return {
        "reused": reused,
        "seconds": round(float(re.search(r"BUILD_SECONDS ([\d.]+)", proc.stdout).group(1)), 1),
        "peak_rss_mib": round(int(re.search(r"PEAK_RSS_KB (\d+)", proc.stderr).group(1)) / 1024),
        "index_mb": round(du(index) / 1e6, 1),
    }


def run_pinned(command: list[str], processes: int, env: dict) -> tuple[int, str]:
    """launch/local.py's environment, but each process pinned to its own core with one XLA thread
    (`--pin`): the work division measured apart from how many threads one process uses."""
    sys.path.insert(0, os.path.join(ROOT, "launch"))
    from local import free_port, process_envs

    cores = sorted(os.sched_getaffinity(0))
    envs = process_envs(processes, 1, free_port())
    procs = []
    for i, extra in enumerate(envs):
        extra = dict(extra)
        extra["XLA_FLAGS"] += " --xla_cpu_multi_thread_eigen=false"
        core = cores[i % len(cores)]
        procs.append(
            subprocess.Popen(
                ["taskset", "-c", str(core), sys.executable, *command],
                cwd=ROOT,
                env={**env, **extra, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": "1"},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    logs = [p.communicate()[0] for p in procs]
    return max(p.returncode for p in procs), "\n".join(logs)


def mine(args, corpus_dir, teacher, processes: int) -> dict:
    pinned = "-pinned" if args.pin else ""
    name = f"mined-{args.docs}{_scale(args)}-{args.max_docs}-p{processes}{pinned}"
    output = os.path.join(args.workdir, name)
    subprocess.run(["rm", "-rf", output], check=True)
    command = ["-m", "querit_jax.mine", f"--config={config_file(args)}"]
    command += overrides(args, corpus_dir, teacher, output)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    start = time.time()
    if args.pin:
        returncode, log = run_pinned(command, processes, env)
    else:
        # Through the launcher even for 1 process: each miner is then a child of a small process
        # (its ru_maxrss, which the miner logs, would otherwise count this process's pages too).
        argv = [sys.executable, "launch/local.py", f"--num_processes={processes}",
                "--devices_per_process=1", "--", *command]  # fmt: skip
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, env=env)
        returncode, log = proc.returncode, proc.stdout + proc.stderr
    wall = time.time() - start
    if returncode:
        sys.exit(log[-4000:])
    per = [
        {
            "process": int(m[0]),
            "docs": int(m[1]),
            "seconds": float(m[2]),
            "docs_per_s": float(m[3]),
            "compile_seconds": float(m[4]),
            "steady_docs_per_s": round(int(m[1]) / max(float(m[2]) - float(m[4]), 1e-9), 2),
            "peak_rss_mib": int(m[5]),
        }
        for m in re.findall(
            r"process (\d+): mined \d+ shards, (\d+) documents in ([\d.]+) s \(([\d.]+) docs/s; "
            r"([\d.]+) s of it compiling programs\), peak RSS (\d+) MiB",
            log,
        )
    ]
    docs = sum(p["docs"] for p in per)
    manifest = json.load(open(os.path.join(output, "manifest.json")))
    size = du(output, skip=os.path.join(output, "index"))
    groups = manifest["totals"].get("groups", 0)
    return {
        "processes": processes,
        "per_process": per,
        "aggregate_docs_per_s": round(docs / max(p["seconds"] for p in per), 2),
        "steady_docs_per_s": round(docs / max(p["seconds"] - p["compile_seconds"] for p in per), 2),
        "wall_seconds": round(wall, 1),
        "groups": groups,
        "mined_mb": round(size / 1e6, 2),
        "bytes_per_group": round(size / max(groups, 1)),
    }


_SPIN = "import time\nt, n = time.time(), 0\nwhile time.time() - t < {s}:\n    n += 1\nprint(n)\n"


def machine_parallelism(processes: int, seconds: float = 8.0) -> float:
    """How much CPU-bound work P processes get done, relative to one (a pure-Python spin loop run
    alone, then P at once): what this machine, shared with other jobs, lets P processes reach."""
    code = _SPIN.format(s=seconds)
    one = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    return round(sum(int(p.communicate()[0]) for p in procs) / one, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, required=True)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument(
        "--max_docs", type=int, default=2000, help="source documents mined (0 = all)"
    )
    parser.add_argument("--shard_size", type=int, default=100)
    parser.add_argument("--workdir", default=os.path.join(ROOT, "workdirs", "mining_scale"))
    parser.add_argument(
        "--pin", action="store_true", help="one core and one XLA thread per process (taskset)"
    )
    parser.add_argument(
        "--text_scale", type=float, default=1.0, help="documents this many times as long"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="interleaved rounds of every process count"
    )
    args = parser.parse_args()
    if "xla_force_host_platform_device_count" in os.environ.get("XLA_FLAGS", ""):
        sys.exit("Unset XLA_FLAGS=--xla_force_host_platform_device_count: never time fake devices.")
    corpus_dir = os.path.join(args.workdir, f"corpus-{args.docs}{_scale(args)}")
    start = time.time()
    write_corpus(os.path.join(corpus_dir, "corpus.jsonl"), args.docs, text_scale=args.text_scale)
    corpus_seconds = time.time() - start
    teacher = make_teacher(os.path.join(args.workdir, "teacher"))
    result = {
        "docs": args.docs,
        "text_scale": args.text_scale,
        "max_docs": args.max_docs,
        "corpus_mb": round(os.path.getsize(os.path.join(corpus_dir, "corpus.jsonl")) / 1e6, 1),
        "corpus_seconds": round(corpus_seconds, 1),
        "index": build_index(args, corpus_dir, teacher),
        "runs": [],
    }
    counts = [int(p) for p in args.processes.split(",")]
    for _ in range(args.rounds):  # the process counts interleaved, round after round
        base = None
        for p in counts:
            run = mine(args, corpus_dir, teacher, p)
            base = base or (run["aggregate_docs_per_s"], run["steady_docs_per_s"])
            run["speedup"] = round(run["aggregate_docs_per_s"] / base[0], 2)
            run["steady_speedup"] = round(run["steady_docs_per_s"] / base[1], 2)
            # Measured right after the run: the same machine load, no mining running.
            run["machine_parallelism"] = machine_parallelism(p)
            result["runs"].append(run)
    for key in ("speedup", "steady_speedup"):
        result[f"median_{key}"] = {
            p: statistics.median(r[key] for r in result["runs"] if r["processes"] == p)
            for p in counts
        }
    print(json.dumps(result, indent=2))
    for run in result["runs"]:
        rates = " / ".join(
            f"{p['docs_per_s']:.1f} ({p['compile_seconds']:.1f} s compiling)"
            for p in run["per_process"]
        )
        rss = " / ".join(str(p["peak_rss_mib"]) for p in run["per_process"])
        index = result["index"]
        built = (
            "reused"
            if index["reused"]
            else f"{index['seconds']:.0f} s, {index['peak_rss_mib']} MiB"
        )
        print(
            f"| {args.docs:,} | {run['processes']} | {args.max_docs or args.docs:,} | {rates} | "
            f"{run['aggregate_docs_per_s']:.1f} ({run['speedup']:.2f}x; machine "
            f"{run['machine_parallelism']:.2f}x) | {run['steady_docs_per_s']:.1f} "
            f"({run['steady_speedup']:.2f}x) | {rss} | "
            f"{built}, {index['index_mb']} MB | "
            f"{run['mined_mb']} MB ({run['bytes_per_group']} B/group) |"
        )


if __name__ == "__main__":
    main()
