"""Peak host memory of `python -m querit_jax.merge` against the size of one input checkpoint.

Writes two randomly initialised checkpoints of a Qwen3 preset (default: the full Qwen3-0.6B, 596M
parameters, float32 — 2.4 GB each) with `save_model`, merges them with SLERP in a subprocess, and
prints wall time, the merge process's peak RSS (its own `ru_maxrss`, reported at exit), the peak RSS
of a process that only imports the merge code and starts JAX (the floor any run pays), the
checkpoint size and the ratio peak / checkpoint size (target < 2: the merge streams tensor by tensor
instead of loading both models). Not run in CI.

  python benchmarks/merge_memory.py [--preset=qwen3_0p6b] [--param_dtype=float32] [--num_layers=0]
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from querit_jax.models.checkpoint import is_model_checkpoint, save_model  # noqa: E402
from querit_jax.models.decoder_config import DECODER_PRESETS, DecoderConfig  # noqa: E402
from querit_jax.models.heads import HeadConfig  # noqa: E402
from querit_jax.models.spec import ModelSpec, abstract_params  # noqa: E402
from querit_jax.models.templates import qwen3_pair  # noqa: E402

TOKENIZER = os.path.join(ROOT, "data", "tokenizers", "xquad_r_bpe")
# Runs a module as __main__ and prints the process's own peak RSS when it exits (absl exits via
# sys.exit, so atexit still runs). VmHWM is the high-water mark of this process's own address space;
# ru_maxrss would also count the parent's pages from before the exec.
_PEAK = (
    "import atexit, re, runpy, sys\n"
    "def peak():\n"
    "    status = open('/proc/self/status').read()\n"
    "    print('PEAK_RSS_KB', re.search(r'VmHWM:\\s+(\\d+)', status).group(1), file=sys.stderr)\n"
    "atexit.register(peak)\n"
    "sys.argv = sys.argv[1:]\n"
    "if sys.argv[0] == '-':\n"
    "    import jax, querit_jax.merging\n"
    "    jax.devices()\n"
    "else:\n"
    "    runpy.run_module(sys.argv[0], run_name='__main__')\n"
)


def write_random_checkpoint(path: str, spec, seed: int, tokenizer) -> int:
    """A checkpoint of random N(0, 0.02) weights (norm scales 1); returns its size in bytes."""
    rng = np.random.default_rng(seed)
    _, abstract = abstract_params(spec)

    def draw(path_, leaf):
        if jax.tree_util.keystr(path_).endswith("['scale']"):
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(rng.standard_normal(leaf.shape, np.float32) * 0.02, leaf.dtype)

    params = jax.tree_util.tree_map_with_path(draw, abstract)
    save_model(path, spec, params, tokenizer)
    del params
    return dir_size(os.path.join(path, "params"))


def dir_size(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )


def run_measured(args: list[str]) -> tuple[float, int, str]:
    """(seconds, peak RSS in bytes, stderr) of `python -m <args>` in a fresh process."""
    env = {**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK, *args], cwd=ROOT, env=env, capture_output=True, text=True
    )
    seconds = time.time() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    return seconds, int(peak[-1].split()[1]) * 1024, proc.stderr


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="qwen3_0p6b")
    parser.add_argument("--param_dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--num_layers", type=int, default=0, help="0 = the preset's")
    parser.add_argument("--workdir", default="", help="default: a temporary directory, removed")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    overrides = {"param_dtype": args.param_dtype}
    if args.num_layers:
        overrides["num_layers"] = args.num_layers
    if args.preset not in DECODER_PRESETS:
        raise SystemExit(f"--preset: choose one of {DECODER_PRESETS}")
    backbone = getattr(DecoderConfig, args.preset)(**overrides)
    spec = ModelSpec(backbone.family, backbone, HeadConfig(), qwen3_pair(), 512)
    _, abstract = abstract_params(spec)
    leaves = jax.tree.leaves(abstract)
    n_params = sum(int(np.prod(x.shape)) for x in leaves)
    largest = max(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves)
    work = args.workdir or tempfile.mkdtemp(prefix="merge_memory_")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    try:
        t0 = time.time()
        sizes = [
            dir_size(os.path.join(work, name, "params"))
            if is_model_checkpoint(os.path.join(work, name))  # --workdir of an earlier run
            else write_random_checkpoint(os.path.join(work, name), spec, seed, tokenizer)
            for seed, name in enumerate(("a", "b"))
        ]
        print(f"wrote 2 checkpoints in {time.time() - t0:.0f}s")
        out = os.path.join(work, "merged")
        merge_seconds, merge_peak, err = run_measured(
            [
                "querit_jax.merge",
                "--config=configs/merge_slerp.py:tiny",
                f"--config.merge.models={work}/a,{work}/b",
                f"--config.merge.output={out}",
                "--config.merge.flush_mb=256",
            ]
        )
        _, floor_peak, _ = run_measured(["-"])
        size = sizes[0]
        rows = [
            ("model", f"{args.preset} ({backbone.num_layers} layers, {args.param_dtype})"),
            ("parameters", f"{n_params / 1e6:.0f}M"),
            ("checkpoint size (one input)", f"{size / 2**30:.2f} GiB"),
            ("largest tensor", f"{largest / 2**30:.2f} GiB"),
            ("merge wall time (process)", f"{merge_seconds:.1f} s"),
            ("merge peak RSS", f"{merge_peak / 2**30:.2f} GiB"),
            ("import + JAX floor peak RSS", f"{floor_peak / 2**30:.2f} GiB"),
            ("peak RSS / checkpoint size", f"{merge_peak / size:.2f}x (target < 2x)"),
            ("merged checkpoint size", f"{dir_size(os.path.join(out, 'params')) / 2**30:.2f} GiB"),
        ]
        width = max(len(k) for k, _ in rows)
        for k, v in rows:
            print(f"{k:<{width}}  {v}")
        print("merge log:", *[line for line in err.splitlines() if "Merged" in line])
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
