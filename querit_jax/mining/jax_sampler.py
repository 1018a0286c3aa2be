"""A JAX-native sampler for any imported Qwen3 causal LM: prefill + KV cache + batched sampling.

Prompts are rendered with the checkpoint tokenizer's chat template (a single user turn with the
generation prompt) when it has one, left-padded to a common length, prefilled in one pass, then decoded
one token per step against a preallocated KV cache [B, prompt + max_new_tokens, K, D]. Positions count
real tokens only (as transformers' `generate` does for left padding), so a padded row decodes exactly
as it would alone. Greedy (temperature 0) or temperature + top-p sampling with a per-row seed; a row
stops at an end token or a stop string. Parameters and the batch live on a mesh like training.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from querit_jax import sharding
from querit_jax.data.tokenize import pad_batch
from querit_jax.errors import CheckpointError
from querit_jax.loading import load_model
from querit_jax.mining.generators import SamplingConfig
from querit_jax.models.decoder import positions_from_segments


def _lm_matrix(module) -> jax.Array:
    """[H, V] output projection of a causal LM (its lm_head, or the tied embedding)."""
    if hasattr(module, "lm_head"):
        return module.lm_head.kernel[...]
    return module.model.embed_tokens.embedding[...].T


def _choose(logits, keys, temperature: float, top_p: float):
    """Next tokens [B] from logits [B, V]: argmax, or temperature + nucleus sampling."""
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    cutoff_index = jnp.sum(
        cum < top_p, axis=-1, keepdims=True
    )  # keep the smallest set reaching top_p
    cutoff = jnp.take_along_axis(sorted_logits, cutoff_index, axis=-1)
    logits = jnp.where(logits < cutoff, -jnp.inf, logits)
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _prefill(graphdef, params, ids, seg, cache):
    module = nnx.merge(graphdef, params)
    s = cache[0][0].shape[1]
    p = ids.shape[1]
    positions = positions_from_segments(seg)
    key_valid = jnp.zeros((ids.shape[0], s), bool).at[:, :p].set(seg > 0)
    causal = jnp.arange(s)[None, None, :] <= jnp.arange(p)[None, :, None]
    own = jnp.arange(s)[None, None, :] == jnp.arange(p)[None, :, None]  # pads see themselves
    mask = (causal & key_valid[:, None, :]) | own
    hidden, cache = module.model.decode(ids, positions, mask, cache, 0)
    return hidden[:, -1] @ _lm_matrix(module).astype(hidden.dtype), cache, key_valid


def _step(graphdef, params, token, position, index, key_valid, cache):
    module = nnx.merge(graphdef, params)
    key_valid = key_valid.at[:, index].set(True)
    mask = (key_valid & (jnp.arange(key_valid.shape[1])[None, :] <= index))[:, None, :]
    hidden, cache = module.model.decode(token[:, None], position[:, None], mask, cache, index)
    return hidden[:, -1] @ _lm_matrix(module).astype(hidden.dtype), cache, key_valid


def _full_forward(graphdef, params, ids, seg):
    """Without a cache: the whole (left-padded) sequence again; logits at the last position."""
    module = nnx.merge(graphdef, params)
    hidden = module.model(ids, seg)
    return hidden[:, -1] @ _lm_matrix(module).astype(hidden.dtype)


def row_key(seed: int) -> jax.Array:
    """A PRNG key from a non-negative seed of up to 64 bits (PRNGKey alone keeps only 32)."""
    seed = int(seed) % (1 << 64)
    return jax.random.fold_in(jax.random.PRNGKey(seed & 0xFFFFFFFF), seed >> 32)


def prompt_bucket(length: int, smallest: int = 32, step: int = 256) -> int:
    """Padded prompt length: powers of two up to `step`, then multiples of `step`, so a run over
    varied documents compiles a handful of shapes, not one per batch."""
    n = smallest
    while n < min(length, step):
        n *= 2
    return n if length <= n else -(-length // step) * step


class JaxSampler:
    """`generate(prompts, documents, seeds)` -> completions, for the miner (see generators.py)."""

    name = "jax"

    def __init__(
        self,
        model_path: str,
        sampling: SamplingConfig = SamplingConfig(),
        batch_size: int = 8,
        use_chat_template: bool = True,
        model=None,
    ):
        self.model = model or load_model(model_path, head="yes_no")
        if self.model.spec.head.kind == "embed":
            raise CheckpointError(f"{model_path} is an embedder; the sampler needs a causal LM.")
        self.tokenizer, self.sampling, self.batch_size = self.model.tokenizer, sampling, batch_size
        self.use_chat_template = use_chat_template and bool(
            getattr(self.tokenizer, "chat_template", None)
        )
        # Plain closures over the graph definition (not jitted methods with a static `self`, which
        # would keep the sampler and its parameters alive in the jit cache after mining ends).
        graphdef = self.model.graphdef
        self._prefill = jax.jit(functools.partial(_prefill, graphdef))
        self._step = jax.jit(functools.partial(_step, graphdef))
        self._full_forward = jax.jit(functools.partial(_full_forward, graphdef))
        stop_tokens = {
            self.tokenizer.eos_token_id,
            self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            self.tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        }
        self.stop_ids = np.array(
            sorted(t for t in stop_tokens if isinstance(t, int) and t >= 0), np.int32
        )

    # ----- public API ------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        if self.use_chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                tokenize=True,
                add_generation_prompt=True,
                return_dict=True,
            )["input_ids"]
            return list(ids)
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def generate_ids(
        self, prompt_ids: list[list[int]], seeds: list[int], use_cache: bool = True
    ) -> list[list[int]]:
        """New token ids per prompt (without the stop token)."""
        cfg = self.sampling
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows = len(prompt_ids)
        # Pad the batch (with copies of its first prompt) and the length to fixed buckets so the
        # prefill/step programs are reused across batches; extra rows are dropped at the end.
        b = max(rows, self.batch_size) if use_cache else rows
        prompt_ids = list(prompt_ids) + [prompt_ids[0]] * (b - rows)
        seeds = list(seeds) + [0] * (b - rows)
        longest = max(len(p) for p in prompt_ids)
        length = prompt_bucket(longest) if use_cache else longest
        ids, seg, _ = pad_batch(prompt_ids, length, pad, left=True)
        total = length + cfg.max_new_tokens
        keys = jnp.stack([row_key(s) for s in seeds])
        out = np.zeros((b, cfg.max_new_tokens), np.int32)
        done = np.arange(b) >= rows  # filler rows never hold the loop open
        lengths = np.zeros(b, np.int32)
        params = self.model.params
        with sharding.use_rules(self.model.mesh, self.model.logical_rules):
            if use_cache:
                cache = self.model.module().model.init_cache(
                    b, total, jnp.dtype(self.model.spec.backbone.dtype)
                )
                logits, cache, key_valid = self._prefill(
                    params, jnp.asarray(ids), jnp.asarray(seg), cache
                )
            else:
                logits = self._full_forward(params, jnp.asarray(ids), jnp.asarray(seg))
            position = jnp.asarray(seg.sum(-1).astype(np.int32))
            for t in range(cfg.max_new_tokens):
                token = np.asarray(
                    _choose(
                        logits,
                        jax.vmap(jax.random.fold_in, (0, None))(keys, t),
                        cfg.temperature,
                        cfg.top_p,
                    )
                )
                finished = np.isin(token, self.stop_ids)
                out[:, t] = np.where(done, pad, token)
                lengths = np.where(done | finished, lengths, t + 1)
                done |= finished | self._hit_stop(out, lengths)
                if done.all() or t == cfg.max_new_tokens - 1:
                    break
                if use_cache:
                    logits, cache, key_valid = self._step(
                        params, jnp.asarray(token), position, length + t, key_valid, cache
                    )
                else:
                    ids = np.concatenate([ids, token[:, None]], axis=1)
                    seg = np.concatenate([seg, np.ones((b, 1), np.int32)], axis=1)
                    logits = self._full_forward(params, jnp.asarray(ids), jnp.asarray(seg))
                position = position + 1
        return [list(out[i, : lengths[i]]) for i in range(rows)]

    def _hit_stop(self, out, lengths) -> np.ndarray:
        if not self.sampling.stop:
            return np.zeros(len(lengths), bool)
        texts = [self.tokenizer.decode(out[i, : lengths[i]]) for i in range(len(lengths))]
        return np.array([any(s in text for s in self.sampling.stop) for text in texts])

    def generate(self, prompts, documents, seeds) -> list[str]:
        del documents  # the prompt already holds the document
        texts = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = [self.encode_prompt(p) for p in prompts[start : start + self.batch_size]]
            for ids in self.generate_ids(chunk, list(seeds[start : start + self.batch_size])):
                text = self.tokenizer.decode(ids, skip_special_tokens=False)
                for stop in self.sampling.stop:  # cut at the first stop string
                    text = text.split(stop)[0]
                texts.append(text)
        return texts
