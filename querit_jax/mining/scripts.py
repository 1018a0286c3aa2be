"""Scripts written without spaces between words (one definition for BM25 and the heuristic generator)."""

# Kana, CJK ideographs and compatibility ideographs; Thai, Lao, Myanmar, Khmer.
UNSEGMENTED = (
    r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
    r"\u0e00-\u0e7f\u0e80-\u0eff\u1000-\u109f\u1780-\u17ff"
)
