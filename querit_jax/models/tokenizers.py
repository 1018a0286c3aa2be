"""Loading Hugging Face tokenizers (a local directory or a Hub id).

A tokenizer whose `tokenizer_config.json` names a class transformers exports and that is backed by
`tokenizers` (the generic `TokenizersBackend`, formerly `PreTrainedTokenizerFast`, as the demo's
data/tokenizers/xquad_r_bpe; `BertTokenizer`, `XLMRobertaTokenizer`, `Qwen2Tokenizer`...) and that
ships a `tokenizer.json` is loaded by that class directly: the same class and object
`AutoTokenizer` gives, without what `AutoTokenizer` imports first (transformers' model configuration
code, and with it torch when torch is installed: 2-4 s of every process that loads a tokenizer, for
nothing a JAX process uses). Anything else (no class named, no tokenizer.json) goes through
`AutoTokenizer`.
"""

import json

from querit_jax import storage


def load_tokenizer_dir(name: str):
    """The tokenizer in directory (or Hub id) `name`, as `AutoTokenizer.from_pretrained` loads
    it."""
    config = storage.join(name, "tokenizer_config.json")
    if not storage.is_remote(name) and storage.exists(config):
        try:
            named = json.loads(storage.read_text(config)).get("tokenizer_class")
        except (json.JSONDecodeError, AttributeError):
            named = None  # AutoTokenizer reports what is wrong with the file
        cls = _tokenizers_class(named) if isinstance(named, str) else None
        if cls is not None and storage.exists(storage.join(name, "tokenizer.json")):
            return cls.from_pretrained(name)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _tokenizers_class(named: str):
    """The `tokenizers`-backed tokenizer class transformers exports as `named`, or None."""
    import transformers

    if not named.endswith(("Tokenizer", "TokenizerFast", "TokenizersBackend")):
        return None  # only tokenizer classes are looked up (a model class would import torch)
    cls = getattr(transformers, named, None)
    base = transformers.PreTrainedTokenizerFast
    return cls if isinstance(cls, type) and issubclass(cls, base) else None
