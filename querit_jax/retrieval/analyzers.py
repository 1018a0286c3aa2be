"""Text -> BM25 terms in every language, and the scripts written without spaces between words.

Whitespace tokenisation fails for languages written without spaces (zh, ja, th). Two analysers:
`UnicodeAnalyzer` (built in: words, plus character uni/bigrams for unsegmented scripts) and
`SubwordAnalyzer` (any Hugging Face fast tokenizer, e.g. an XLM-R SentencePiece). Text is
lower-cased. `UNSEGMENTED` is also what the heuristic query generator splits characters on.
"""

import re
import unicodedata
from collections.abc import Callable, Sequence

# Kana, CJK ideographs and compatibility ideographs; Thai, Lao, Myanmar, Khmer.
UNSEGMENTED = (
    r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    r"\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff"
)


# An analyser turns texts into lists of terms.
Analyzer = Callable[[Sequence[str]], list[list[str]]]


class SubwordAnalyzer:
    """Lower-cases and splits text into subword strings with a Hugging Face tokenizer."""

    def __init__(self, tokenizer, batch_size: int = 1024):
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.name_or_path = getattr(tokenizer, "name_or_path", "")

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        out = []
        for i in range(0, len(texts), self.batch_size):
            chunk = [t.lower() for t in texts[i : i + self.batch_size]]
            enc = self.tokenizer(chunk, add_special_tokens=False)["input_ids"]
            out.extend(self.tokenizer.convert_ids_to_tokens(ids) for ids in enc)
        return out


# Scripts written without spaces between words: indexed as character unigrams and bigrams.
_UNSEGMENTED = UNSEGMENTED
_WORD = re.compile(rf"[{_UNSEGMENTED}]+|[^\W{_UNSEGMENTED}]+", re.UNICODE)
_CJK = re.compile(rf"[{_UNSEGMENTED}]")


class UnicodeAnalyzer:
    """Tokeniser-free BM25 terms for any language: NFKC + case folding, words split on non-word
    characters, and runs of unsegmented scripts (Chinese, Japanese, Thai, ...) as character unigrams
    plus bigrams (the usual CJK n-gram indexing)."""

    name_or_path = "unicode"

    def __call__(self, texts: Sequence[str]) -> list[list[str]]:
        out = []
        for text in texts:
            terms = []
            for word in _WORD.findall(unicodedata.normalize("NFKC", text).casefold()):
                if _CJK.match(word):
                    terms.extend(word)
                    terms.extend(word[i : i + 2] for i in range(len(word) - 1))
                else:
                    terms.append(word)
            out.append(terms)
        return out


def analyzer_for(spec) -> SubwordAnalyzer | UnicodeAnalyzer:
    """'unicode' (built in), a tokenizer directory, or an already loaded Hugging Face tokenizer."""
    if spec in (None, "", "unicode"):
        return UnicodeAnalyzer()
    if isinstance(spec, str):
        from querit_jax.models.tokenizers import load_tokenizer_dir

        return SubwordAnalyzer(load_tokenizer_dir(spec))
    return SubwordAnalyzer(spec)
