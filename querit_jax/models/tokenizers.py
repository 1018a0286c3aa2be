"""Loading Hugging Face tokenizers (a local directory or a Hub id).

A tokenizer saved with the generic fast class (`TokenizersBackend`, formerly
`PreTrainedTokenizerFast`: what a tokenizer trained with `tokenizers` is, e.g. the demo's
data/tokenizers/xquad_r_bpe) is loaded by that class directly. `AutoTokenizer` gives the same
object, but it imports transformers' model configuration code first, and with it torch when torch is
installed: about 2 s of every process start, for nothing a JAX process uses. Every other tokenizer
goes through `AutoTokenizer`.
"""

import json

from querit_jax import storage

GENERIC_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")


def load_tokenizer_dir(name: str):
    """The tokenizer in directory (or Hub id) `name`, as `AutoTokenizer.from_pretrained` loads
    it."""
    config = storage.join(name, "tokenizer_config.json")
    if not storage.is_remote(name) and storage.exists(config):
        try:
            named = json.loads(storage.read_text(config)).get("tokenizer_class")
        except (json.JSONDecodeError, AttributeError):
            named = None  # AutoTokenizer reports what is wrong with the file
        generic = named in GENERIC_CLASSES
        if generic and storage.exists(storage.join(name, "tokenizer.json")):
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(name)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)
