"""Trains the demo's Qwen-style byte-level BPE tokenizer on the bundled XQuAD-R text.

No Qwen tokenizer can be downloaded here, so the CPU demo uses a small tokenizer with the same
design: NFC normalisation, Qwen2's pre-tokenisation regex, byte-level BPE, and Qwen's special tokens
(`<|endoftext|>` is both the pad token and the end token a `qwen3_pair` template appends: the
Qwen3-Embedding pad==EOS case the exporter must handle).

  python tools/build_demo_tokenizer.py --data=data/xquad_r --out=data/tokenizers/xquad_r_bpe
  --vocab_size=16384
"""

import glob
import json
import os

from absl import app, flags
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

# Qwen2/Qwen3's pre-tokenisation pattern (tokenizer.json of the Qwen2 family).
QWEN_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|fim_pad|>",
    "<think>",
    "</think>",
]

_DATA = flags.DEFINE_string(
    "data", "data/xquad_r", "BEIR directories (one per language) to train on."
)
_OUT = flags.DEFINE_string("out", "data/tokenizers/xquad_r_bpe", "Output directory.")
_VOCAB = flags.DEFINE_integer("vocab_size", 16384, "Vocabulary size including special tokens.")


def iter_texts(root: str):
    paths = glob.glob(os.path.join(root, "**", "corpus.jsonl"), recursive=True)
    paths += glob.glob(os.path.join(root, "**", "queries.jsonl"), recursive=True)
    for path in sorted(paths):
        with open(path, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                yield f"{row.get('title', '')} {row['text']}".strip()


def build(data: str, out: str, vocab_size: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    texts = list(iter_texts(data))
    if not texts:
        raise FileNotFoundError(f"{data}: no corpus.jsonl/queries.jsonl found.")
    # Lower-cased copies teach "yes"/"no" and common lower-case forms without dropping case.
    tok.train_from_iterator(texts + [t.lower() for t in texts] + ["yes no"] * 100, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:],
        clean_up_tokenization_spaces=False,
        model_max_length=2048,
    )
    fast.save_pretrained(out)
    return fast


def main(argv):
    del argv
    fast = build(_DATA.value, _OUT.value, _VOCAB.value)
    print(
        f"wrote {_OUT.value}: {len(fast)} tokens; yes={fast.convert_tokens_to_ids('yes')} "
        f"no={fast.convert_tokens_to_ids('no')}"
    )


if __name__ == "__main__":
    app.run(main)
