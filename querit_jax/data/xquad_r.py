"""XQuAD-R (LAReQA; Roy et al., EMNLP 2020, arXiv 2004.05484) -> BEIR layout at sentence level.

Each language file is SQuAD-style JSON whose paragraphs carry `sentences` and `sentence_breaks`. As
in the paper, the candidates are the sentences and a question's relevant candidate is the sentence
whose [start, end) span contains the answer's `answer_start`. The data is split by *article* (every
`test_every`-th article is test) into two BEIR directories per language, `<lang>/train` and
`<lang>/test`, each with the corpus of its own articles only: training never sees a test article's
sentences, not even as a mined negative, in any language (the data is 11-way parallel: question ids
are the same in every language).

  python -m querit_jax.data.xquad_r --src=../shared/data/xquad-r --out=data/xquad_r
  -> data/xquad_r/<lang>/{train,test}/{corpus.jsonl, queries.jsonl, qrels/<split>.tsv}

Data license: CC BY-SA 4.0 (the derived files keep it; see data/xquad_r/README.md).
"""

import json
from collections.abc import Sequence

from absl import app, flags

from querit_jax import storage
from querit_jax.data.io import write_jsonl
from querit_jax.errors import DataFormatError

LANGUAGES = ("ar", "de", "el", "en", "es", "hi", "ru", "th", "tr", "vi", "zh")


def doc_id(article: int, paragraph: int, sentence: int) -> str:
    return f"a{article:02d}-p{paragraph:02d}-s{sentence:02d}"


def _sentence_of(breaks: Sequence[Sequence[int]], answer_start: int) -> int | None:
    for i, (start, end) in enumerate(breaks):
        if start <= answer_start < end:
            return i
    return None


def convert_language(src_json: str, out_dir: str, lang: str, test_every: int = 5) -> dict:
    """Converts one language file into `out_dir/train` and `out_dir/test`; returns counts per split.

    With `test_every=0` nothing is held out: `out_dir` itself gets every sentence and every question
    (qrels/test.tsv), the full LAReQA pool of the language.

    Raises:
      DataFormatError: naming the question when its answer lies in no sentence, or when the file is
        not XQuAD-R JSON.
    """
    try:
        data = json.loads(storage.read_text(src_json))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataFormatError(f"{src_json}: not an XQuAD-R/SQuAD JSON file ({e}).") from None
    full = test_every <= 0
    splits = {
        name: {"corpus": [], "queries": [], "qrels": []}
        for name in (("test",) if full else ("train", "test"))
    }
    for a, article in enumerate(data):
        split = splits["test" if full or a % test_every == test_every - 1 else "train"]
        for p, para in enumerate(article["paragraphs"]):
            sentences, breaks = para.get("sentences"), para.get("sentence_breaks")
            if sentences is None or breaks is None or len(sentences) != len(breaks):
                raise DataFormatError(
                    f"{src_json}: article {a} paragraph {p} lacks matching "
                    "'sentences'/'sentence_breaks'."
                )
            for s, sentence in enumerate(sentences):
                if sentence.strip():
                    split["corpus"].append(
                        {"_id": doc_id(a, p, s), "title": "", "text": sentence.strip()}
                    )
            for qa in para["qas"]:
                start = qa["answers"][0]["answer_start"]
                s = _sentence_of(breaks, start)
                if s is None:
                    raise DataFormatError(
                        f"{src_json}: question {qa['id']} answer_start={start} lies in no sentence "
                        "span."
                    )
                split["queries"].append(
                    {
                        "_id": qa["id"],
                        "text": qa["question"],
                        "metadata": {"article": a, "lang": lang},
                    }
                )
                split["qrels"].append((qa["id"], doc_id(a, p, s)))
    counts = {}
    for name, split in splits.items():
        root = out_dir if full else storage.join(out_dir, name)
        write_jsonl(storage.join(root, "corpus.jsonl"), split["corpus"])
        write_jsonl(storage.join(root, "queries.jsonl"), split["queries"])
        qrels = "".join(f"{q}\t{d}\t1\n" for q, d in split["qrels"])
        storage.write_text(
            storage.join(root, "qrels", f"{name}.tsv"), f"query-id\tcorpus-id\tscore\n{qrels}"
        )
        counts[name] = {"documents": len(split["corpus"]), "queries": len(split["queries"])}
    return counts


def convert(
    src_dir: str, out_dir: str, languages: Sequence[str] | None = None, test_every: int = 5
) -> dict:
    """Converts every language file found in `src_dir` (or the given ones); returns counts per
    language."""
    languages = languages or [
        lang for lang in LANGUAGES if storage.exists(storage.join(src_dir, f"{lang}.json"))
    ]
    if not languages:
        raise FileNotFoundError(f"{src_dir}: no XQuAD-R language files (<lang>.json) found.")
    return {
        lang: convert_language(
            storage.join(src_dir, f"{lang}.json"), storage.join(out_dir, lang), lang, test_every
        )
        for lang in languages
    }


def _main() -> None:
    """The command line; flags are defined here so that importing this module defines none."""
    src = flags.DEFINE_string("src", None, "Directory holding XQuAD-R <lang>.json files.")
    out = flags.DEFINE_string("out", None, "Output directory (one BEIR directory per language).")
    langs = flags.DEFINE_list("languages", None, "Languages to convert (default: all found).")
    test_every = flags.DEFINE_integer(
        "test_every",
        5,
        "Every n-th article goes to the test split; 0 = one full pool per language.",
    )
    flags.mark_flags_as_required(["src", "out"])

    def main(argv):
        del argv
        print(json.dumps(convert(src.value, out.value, langs.value, test_every.value), indent=2))

    app.run(main)


if __name__ == "__main__":
    _main()
