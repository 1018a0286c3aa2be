"""Peak host memory of a streaming export (tools/convert_hf/export_hf.py) against its largest shard.

Writes a model checkpoint of a ~1B-parameter Qwen3-shaped model (default: width 2048, 20 layers, MLP
6144, the demo tokenizer's 16384-token vocabulary: 1.04B parameters, 4.2 GB in float32) with random
weights, shape first and tensor by tensor (Orbax partial saves, so this process never holds the
model either), exports it to bf16 safetensors shards in a subprocess, and prints the export's peak
RSS (its own VmHWM at exit), the peak RSS of the same export of a 2-layer width-64 checkpoint (the
runtime's own footprint: Python, JAX, Orbax, transformers' tokenizer), the largest shard, and peak /
(1.5 x largest shard + footprint): below 1 means the export streams. Measured twice: the library
call (`release.export.export_checkpoint`) and the CLI (tools/convert_hf/export_hf.py, which also
runs the publishability scan over the written files). Checks free disk space first; removes
everything at the end.

  python benchmarks/export_memory.py [--num_layers=20] [--hidden=2048] [--max_shard_size=1GB]
      [--in_memory]   # also measure the old path (load the whole model, convert, write)
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from querit_jax.merging.checkpoints import OutputWriter  # noqa: E402
from querit_jax.models.decoder_config import DecoderConfig  # noqa: E402
from querit_jax.models.heads import HeadConfig  # noqa: E402
from querit_jax.models.spec import ModelSpec, abstract_params, flatten  # noqa: E402
from querit_jax.models.templates import qwen3_pair  # noqa: E402
from querit_jax.release.export import parse_size  # noqa: E402

TOKENIZER = os.path.join(ROOT, "data", "tokenizers", "xquad_r_bpe")
# Runs a script and prints its own peak RSS (VmHWM: this process's high-water mark) at exit.
_PEAK = (
    "import atexit, re, runpy, sys\n"
    "def peak():\n"
    "    status = open('/proc/self/status').read()\n"
    "    print('PEAK_RSS_KB', re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "sys.argv = sys.argv[1:]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)
_STREAMING = (  # the library's streaming export (release.export.export_checkpoint)
    "import sys\n"
    "from querit_jax.release.export import export_checkpoint\n"
    "export_checkpoint(sys.argv[1], sys.argv[2], max_shard_bytes=int(sys.argv[3]))\n"
)
_IN_MEMORY = (  # the path before streaming: the whole model loaded, then converted and written
    "import sys\n"
    "from querit_jax.loading import load_model\n"
    "from querit_jax.release.export import export_hf\n"
    "export_hf(load_model(sys.argv[1]), sys.argv[2], dtype='bfloat16', "
    "max_shard_bytes=int(sys.argv[3]))\n"
)


def write_checkpoint(path: str, spec, flush_bytes: int = 256 * 2**20) -> int:
    """Random N(0, 0.02) weights (norm scales 1), created and saved one tensor at a time."""
    rng = np.random.default_rng(0)
    _, abstract = abstract_params(spec)
    flat = flatten(abstract)
    keys = {name: tuple(int(k) if k.isdigit() else k for k in name.split(".")) for name in flat}
    writer = OutputWriter(path, keys, flush_bytes)
    for name, leaf in flat.items():
        if name.endswith("scale"):
            value = np.ones(leaf.shape, leaf.dtype)
        else:
            value = (rng.standard_normal(leaf.shape, np.float32) * 0.02).astype(leaf.dtype)
        writer.add(name, jax.device_put(value))
        del value
    meta = {**spec.to_json(), "tokenizer": "tokenizer"}
    writer.finish(meta, TOKENIZER, {"benchmark": "export_memory"}, "benchmark_manifest.json")
    return dir_size(os.path.join(path, "params"))


def dir_size(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def run_measured(args: list[str]) -> tuple[float, int]:
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    return time.time() - start, int(peak[-1].split()[1]) * 1024


def _spec(hidden: int, layers: int) -> ModelSpec:
    backbone = DecoderConfig.tiny_demo(
        hidden_size=hidden,
        intermediate_size=3 * hidden,
        num_layers=layers,
        num_heads=16,
        num_kv_heads=8,
        head_dim=max(hidden // 16, 8),
        tie_word_embeddings=False,
    )
    return ModelSpec("qwen3", backbone, HeadConfig(), qwen3_pair(), 512, 64)


def cli_export(ckpt: str, out: str, shard: int) -> tuple[float, int]:
    script = os.path.join(ROOT, "tools", "convert_hf", "export_hf.py")
    return run_measured(
        [script, f"--checkpoint={ckpt}", f"--out={out}", f"--max_shard_size={shard}"]
    )


def script_export(work: str, code: str, ckpt: str, out: str, shard: int) -> tuple[float, int]:
    path = os.path.join(work, f"run_{len(code)}.py")
    with open(path, "w") as f:
        f.write(code)
    return run_measured([path, ckpt, out, str(shard)])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_layers", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--max_shard_size", default="1GB")
    parser.add_argument("--in_memory", action="store_true", help="also measure the old path")
    parser.add_argument("--workdir", default="", help="default: a temporary directory, removed")
    args = parser.parse_args()
    spec = _spec(args.hidden, args.num_layers)
    leaves = jax.tree.leaves(abstract_params(spec)[1])
    n_params = sum(int(np.prod(x.shape)) for x in leaves)
    work = args.workdir or tempfile.mkdtemp(prefix="export_memory_")
    need = n_params * 4 * 1.6  # the checkpoint (fp32) + the bf16 export, with room to spare
    free = shutil.disk_usage(work).free
    if free < need:
        raise SystemExit(f"{work}: {free / 2**30:.1f} GiB free, {need / 2**30:.1f} GiB needed.")
    shard = parse_size(args.max_shard_size)
    try:
        t0 = time.time()
        ckpt = os.path.join(work, "ckpt")
        size = write_checkpoint(ckpt, spec)
        written = time.time() - t0
        out = os.path.join(work, "hf")
        seconds, peak = script_export(work, _STREAMING, ckpt, out, shard)
        small = os.path.join(work, "small")
        write_checkpoint(small, _spec(64, 2))
        _, floor = script_export(work, _STREAMING, small, os.path.join(work, "hf_small"), shard)
        shards = [f for f in os.listdir(out) if f.endswith(".safetensors")]
        largest = max(os.path.getsize(os.path.join(out, f)) for f in shards)
        cli_s, cli_peak = cli_export(ckpt, os.path.join(work, "hf_cli"), shard)
        _, cli_floor = cli_export(small, os.path.join(work, "hf_cli_small"), shard)
        gib = lambda b: round(b / 2**30, 3)  # noqa: E731
        report = {
            "parameters": n_params,
            "checkpoint_gib": gib(size),
            "checkpoint_write_s": round(written, 1),
            "shards": len(shards),
            "largest_shard_gib": gib(largest),
            "export_s": round(seconds, 1),
            "export_peak_rss_gib": gib(peak),
            "export_floor_rss_gib": gib(floor),
            "export_peak_over_1.5x_shard_plus_floor": round(peak / (1.5 * largest + floor), 3),
            # The CLI also runs release.publish.check_publishable, which reads every file whole.
            "cli_s": round(cli_s, 1),
            "cli_peak_rss_gib": gib(cli_peak),
            "cli_floor_rss_gib": gib(cli_floor),
            "cli_peak_over_1.5x_shard_plus_floor": round(cli_peak / (1.5 * largest + cli_floor), 3),
        }
        if args.in_memory:
            old_s, old_peak = script_export(
                work, _IN_MEMORY, ckpt, os.path.join(work, "hf_in_memory"), shard
            )
            report.update(in_memory_export_s=round(old_s, 1), in_memory_peak_rss_gib=gib(old_peak))
        print(json.dumps(report, indent=2))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
