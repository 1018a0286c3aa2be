"""Dataset names in configs: `DIR[:split]` (BEIR), `miracl:ROOT:LANG[:split]`, a groups `FILE.jsonl`
or a mining output directory; each may be a local path or a gs:// URL.

How training turns them into groups is `training.inputs`'s job; evaluation loads them here too.
"""

from querit_jax import storage
from querit_jax.data import beir


def split_spec(spec: str) -> list[str]:
    """`spec` cut at its colons, except the one of a URL scheme: "gs://b/x:test" -> ["gs://b/x",
    "test"], "miracl:gs://b/m:de" -> ["miracl", "gs://b/m", "de"]."""
    parts, rest = [], spec
    while rest:
        scheme = rest.find("://")
        start = scheme + 3 if scheme != -1 and ":" not in rest[:scheme] else 0
        cut = rest.find(":", start)
        if cut == -1:
            parts.append(rest)
            break
        parts.append(rest[:cut])
        rest = rest[cut + 1 :]
    return parts


def parse_source(spec: str, default_split: str = "train") -> tuple[str, str, str]:
    """'x.jsonl' -> ("groups", path, ""); a mining output dir -> ("mined", DIR, "");
    'miracl:ROOT:LANG[:split]' -> ("miracl", "ROOT:LANG", split); 'DIR[:split]' -> ("beir", DIR,
    split).

    Without an explicit split, a directory named like one of its qrels files (data/xquad_r/en/test)
    uses that split, else `default_split`.
    """
    if spec.endswith((".jsonl", ".jsonl.gz")):
        return "groups", spec, ""
    if spec.startswith("miracl:"):
        _, root, lang, *split = split_spec(spec)
        return "miracl", f"{root}:{lang}", (split[0] if split else "dev")
    if storage.exists(storage.join(spec, "manifest.json")) and not storage.exists(
        storage.join(spec, "corpus.jsonl")
    ):
        return "mined", spec, ""
    path, *split = split_spec(spec)
    split = split[0] if split else ""
    if not split:
        base = storage.basename(path)
        split = (
            base if storage.exists(storage.join(path, "qrels", f"{base}.tsv")) else default_split
        )
    return "beir", path, split


def load_dataset(kind: str, path: str, split: str, strict: bool = True):
    """A BEIR or MIRACL dataset named by `parse_source`."""
    if kind == "miracl":
        from querit_jax.data.miracl import load_miracl

        root, lang = path.rsplit(":", 1)
        return load_miracl(root, lang, split, strict)
    return beir.load_beir(path, split, strict=strict)


def dataset_name(path: str, split: str) -> str:
    """A short display name: the directory (and its parent when the directory is the split)."""
    norm = storage.absolute(path)
    base = storage.basename(norm)
    if base == split:
        return f"{storage.basename(storage.dirname(norm))}/{split}"
    return f"{base}:{split}"
