"""The package's import layering: every unit imports only units of lower layers (lazy imports too).

A unit is a subpackage (`models`, `data`, ...) or a top-level module (`storage`, `loading`, ...).
The order, lowest first, and why each layer sits where it does:

  errors, distributed      nothing below them: every layer may raise a user error
  sharding, storage        mesh and logical axes; every location (local or gs://)
  logs                     the project logger, log files, progress lines
  models                   families, layers, spec, templates, the model checkpoint format
  data                     formats (BEIR, MIRACL, groups, runs, mined shards, prompts),
  tokenisation,
                           packing, grain pipelines
  convert                  Hugging Face interop (config and weight tables, safetensors,
  import/export)
  retrieval                BM25, dense retrieval, exact sharded top-k: one `search` interface
  inference                batched runners over a mesh: scorer, embedder, teacher
  loading                  any model location -> a model, a retriever, a teacher
  eval                     metrics, the reranking protocol, the evaluation suite and reports: used
  by
                           training (evaluation during a run), mining, release and `evaluate`
  config_lib               ConfigDict -> frozen, validated dataclasses
  training, mining, merging          the phases: they never import each other
  release                  packages what the phases produced (export, model card, verify, publish)
  workflow                 the paper's whole loop over the phases (stage 1, mining, adaptation,
                           merge, export, evaluation, report)
  cli                      user errors -> one line, exit 2
  entry points             train, mine, merge, evaluate, rerank, retrieve, plan, loop
"""

import ast
import os

from tests.helpers import ROOT

LAYERS = (
    ("errors", "distributed"),
    ("sharding", "storage"),
    ("logs",),
    ("models",),
    ("data",),
    ("convert",),
    ("retrieval",),
    ("inference",),
    ("loading",),
    ("eval",),
    ("config_lib",),
    ("training", "mining", "merging"),
    ("release",),
    ("workflow",),
    ("cli",),
    ("train", "mine", "merge", "evaluate", "rerank", "retrieve", "plan", "loop"),
)
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}
PACKAGE = os.path.join(ROOT, "querit_jax")


def _modules():
    """(dotted module name, path, is package __init__) for every module of the package."""
    for root, _, files in os.walk(PACKAGE):
        for f in sorted(files):
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
                init = f == "__init__.py"
                yield (rel[: -len(".__init__")] if init else rel), path, init


def _imports(module: str, path: str, init: bool):
    """Every querit_jax module imported anywhere in the file (inside functions too)."""
    tree = ast.parse(open(path, encoding="utf-8").read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                base = parts[: len(parts) - node.level + (1 if init else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target
            yield from (f"{target}.{a.name}" for a in node.names)


def _unit(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "querit_jax" else None


def test_every_unit_has_a_layer():
    units = {_unit(m) for m, _, _ in _modules()} - {None}
    assert units <= set(RANK), f"units without a layer: {sorted(units - set(RANK))}"


def test_no_unit_imports_its_own_or_a_higher_layer():
    violations = []
    for module, path, init in _modules():
        me = _unit(module)
        if me is None:
            continue
        for target in _imports(module, path, init):
            other = _unit(target)
            if other is None or other == me or other not in RANK:
                continue
            if RANK[other] >= RANK[me]:
                violations.append(f"{os.path.relpath(path, ROOT)} imports {target} ({other})")
    assert not violations, "upward or sideways imports:\n" + "\n".join(sorted(set(violations)))


def test_no_module_is_over_450_lines():
    long = []
    for _, path, _ in _modules():
        n = open(path, encoding="utf-8").read().count("\n")
        if n > 450:
            long.append(f"{os.path.relpath(path, ROOT)} ({n} lines)")
    assert not long, long
