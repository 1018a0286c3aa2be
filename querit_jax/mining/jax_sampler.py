"""A JAX-native sampler for any imported Qwen3 causal LM: continuous batching over a ring KV cache.

`generate_ids` decodes a queue of prompts with `batch_size` rows in flight. Each row holds one
sequence in a preallocated KV cache [B, S, K, D] (S = longest prompt bucket + max_new_tokens) used
as a ring: decode step c writes every row's new key/value at slot c % S, and a row admitted at step
c has its prompt prefilled into the slots just before it, so its prompt and all its new tokens fit
in S slots without ever overwriting each other. Attention reads the slots a row's `valid` mask marks
(RoPE is applied before caching, so slot order does not matter). When rows finish, the host refills
them with the next prompts (longest first) in groups of `batch_size / 4` rows, each group prefilled
in one pass and scattered into the cache; the batch never waits for its slowest row.

Everything per token runs on device: `check_every` decode steps go in one jitted `while_loop`
(sampling, the stop tokens, the token budget, the per-row PRNG streams), which the host reads back
only between those steps (done flags and counts; the tokens of finished rows). The state (cache
included) is donated, so it is updated in place. Sampling: greedy (temperature 0), or temperature
with top-k and nucleus (top-p) inside jit; row i's token t uses `fold_in(key(seed_i), t)`, so a
row's output does not depend on the batch it ran in. Positions count real tokens only (as
transformers' `generate` does for left padding), so a greedy row decodes exactly as transformers
does. Parameters and rows live on a mesh over the given devices (dp: replicated; fsdp: split).

Chat templates are rendered with `enable_thinking=False` by default (Qwen3's switch; templates
without it ignore the variable), so a reasoning model answers instead of opening a `<think>` block.
"""

import collections
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from querit_jax import sharding
from querit_jax.data.tokenize import pad_batch
from querit_jax.errors import CheckpointError
from querit_jax.loading import load_model, process_mesh
from querit_jax.mining.generators import SamplingConfig, strip_thinking
from querit_jax.models.decoder import positions_from_segments
from querit_jax.sharding import axes


def _lm_matrix(module) -> jax.Array:
    """[H, V] output projection of a causal LM (its lm_head, or the tied embedding)."""
    if hasattr(module, "lm_head"):
        return module.lm_head.kernel[...]
    return module.model.embed_tokens.embedding[...].T


def choose(logits, keys, temperature: float, top_p: float, top_k: int = 0):
    """Next tokens [B] from logits [B, V]: argmax, or temperature + top-k + nucleus sampling."""
    logits = logits.astype(jnp.float32)
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = logits / temperature
    if top_k == 0 and top_p >= 1:
        return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)
    if top_k:
        values, index = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))  # [B, k], best first
    else:
        index = jnp.argsort(-logits, axis=-1)
        values = jnp.take_along_axis(logits, index, axis=-1)
    if top_p < 1:  # the smallest best-first set whose probability reaches top_p
        probs = jax.nn.softmax(values, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs
        values = jnp.where(before < top_p, values, -jnp.inf)
    pick = jax.vmap(jax.random.categorical)(keys, values)
    return jnp.take_along_axis(index, pick[:, None], axis=-1)[:, 0].astype(jnp.int32)


def _sample(logits, keys, counts, decoding):
    """Row i's token number counts[i], from its own key stream."""
    step_keys = jax.vmap(jax.random.fold_in)(keys, counts)
    return choose(logits, step_keys, *decoding)


def _admit(graphdef, decoding, stop_ids, params, state, ids, seg, rows, keys):
    """Prefills prompts [R, L] (left-padded) and puts them in cache rows `rows` [R] (a row index of
    B drops a filler prompt) in the L slots before the clock; samples their first tokens."""
    module = nnx.merge(graphdef, params)
    r, length = ids.shape
    cache = module.model.init_cache(r, length, state["cache"][0][0].dtype)
    positions = positions_from_segments(seg)
    causal = jnp.arange(length)[None, None, :] <= jnp.arange(length)[None, :, None]
    own = (
        jnp.arange(length)[None, None, :] == jnp.arange(length)[None, :, None]
    )  # pads see themselves
    mask = (causal & (seg > 0)[:, None, :]) | own
    hidden, cache = module.model.decode(ids, positions, mask, cache, 0)
    logits = hidden[:, -1] @ _lm_matrix(module).astype(hidden.dtype)
    token = _sample(logits, keys, jnp.zeros(r, jnp.int32), decoding)
    size, budget = state["valid"].shape[1], state["out"].shape[1]
    slots = (state["clock"] - length + jnp.arange(length)) % size  # [L]
    at = (rows[:, None], slots[None, :])
    new = dict(state)
    new["cache"] = [
        (
            k.at[at].set(ck.astype(k.dtype), mode="drop"),
            v.at[at].set(cv.astype(v.dtype), mode="drop"),
        )
        for (k, v), (ck, cv) in zip(state["cache"], cache)
    ]
    valid = jnp.zeros((r, size), bool).at[:, slots].set(seg > 0)
    stop = jnp.isin(token, stop_ids)
    new["valid"] = state["valid"].at[rows].set(valid, mode="drop")
    new["token"] = state["token"].at[rows].set(token, mode="drop")
    new["position"] = state["position"].at[rows].set(seg.sum(-1).astype(jnp.int32), mode="drop")
    new["count"] = state["count"].at[rows].set(jnp.where(stop, 0, 1), mode="drop")
    new["done"] = state["done"].at[rows].set(stop | (budget == 1), mode="drop")
    out = jnp.zeros((r, budget), jnp.int32).at[:, 0].set(jnp.where(stop, 0, token))
    new["out"] = state["out"].at[rows].set(out, mode="drop")
    new["keys"] = state["keys"].at[rows].set(keys, mode="drop")
    return new


def _steps(graphdef, decoding, stop_ids, steps, params, state):
    """Up to `steps` decode steps (fewer once every row is done), all on device."""
    module = nnx.merge(graphdef, params)
    lm = _lm_matrix(module)
    b, size = state["valid"].shape
    budget = state["out"].shape[1]

    def step(carry):
        i, s = carry
        slot = s["clock"] % size
        valid = s["valid"].at[:, slot].set(True)
        hidden, cache = module.model.decode(
            s["token"][:, None], s["position"][:, None], valid[:, None, :], s["cache"], slot
        )
        token = _sample(hidden[:, -1] @ lm.astype(hidden.dtype), s["keys"], s["count"], decoding)
        active = ~s["done"]
        finished = active & jnp.isin(token, stop_ids)
        write = active & ~finished
        out = (
            s["out"].at[jnp.arange(b), jnp.where(write, s["count"], budget)].set(token, mode="drop")
        )
        count = s["count"] + write
        s = dict(
            s,
            cache=cache,
            valid=valid,
            out=out,
            count=count,
            done=s["done"] | finished | (count >= budget),
            token=jnp.where(write, token, s["token"]),
            position=s["position"] + write,
            clock=s["clock"] + 1,
        )
        return i + 1, s

    def more(carry):
        i, s = carry
        return (i < steps) & ~jnp.all(s["done"])

    return jax.lax.while_loop(more, step, (jnp.int32(0), state))[1]


def _new_state(rows: int, size: int, budget: int, layers: int, kv_shape: tuple, dtype) -> dict:
    """Every row empty (done); a cache of `size` slots per row; room for `budget` new tokens."""
    cache = [(jnp.zeros((rows, size, *kv_shape), dtype),) * 2 for _ in range(layers)]
    return {
        "cache": cache,  # per layer (keys, values) [B, S, K, D], as `Qwen3Decoder.init_cache`
        "valid": jnp.zeros((rows, size), bool),
        "token": jnp.zeros(rows, jnp.int32),
        "position": jnp.zeros(rows, jnp.int32),
        "count": jnp.zeros(rows, jnp.int32),
        "done": jnp.ones(rows, bool),
        "out": jnp.zeros((rows, budget), jnp.int32),
        "keys": jnp.zeros((rows, 2), jnp.uint32),
        "clock": jnp.zeros((), jnp.int32),
    }


def _full_forward(graphdef, params, ids, seg):
    """Without a cache: the whole (left-padded) sequence again; logits at the last position."""
    module = nnx.merge(graphdef, params)
    hidden = module.model(ids, seg)
    return hidden[:, -1] @ _lm_matrix(module).astype(hidden.dtype)


def row_key(seed: int) -> np.ndarray:
    """A PRNG key from a non-negative seed of up to 64 bits (PRNGKey alone keeps only 32)."""
    seed = int(seed) % (1 << 64)
    return np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed & 0xFFFFFFFF), seed >> 32))


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
        devices=None,
        check_every: int = 16,
        enable_thinking: bool = False,
        model_sharding: str = "fsdp",
        prompt_buckets: tuple[int, int] = (32, 256),
    ):
        """`devices`: where the model and rows live (default: this process's first device).
        `prompt_buckets`: (smallest, step) of the padded prompt lengths (`prompt_bucket`)."""
        if model is None:
            mesh, rules = process_mesh(devices, model_sharding)
            model = load_model(model_path, mesh, rules, head="yes_no")
        self.model = model
        if self.model.spec.head.kind == "embed":
            raise CheckpointError(f"{model_path} is an embedder; the sampler needs a causal LM.")
        self.tokenizer, self.sampling = self.model.tokenizer, sampling
        self.enable_thinking, self.check_every = enable_thinking, check_every
        self.prompt_buckets = tuple(prompt_buckets)
        self.use_chat_template = use_chat_template and bool(
            getattr(self.tokenizer, "chat_template", None)
        )
        rules = dict(self.model.logical_rules)
        split = sharding.axis_size(self.model.mesh, rules[axes.BATCH])
        self.batch_size = -(-batch_size // split) * split  # rows in flight, a multiple of the split
        self.admit_size = -(-max(1, self.batch_size // 4) // split) * split  # rows per prefill
        self._rows = NamedSharding(self.model.mesh, P(rules[axes.BATCH]))
        self._replicated = NamedSharding(self.model.mesh, P())
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        stop_tokens = {
            self.tokenizer.eos_token_id,
            self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            self.tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        }
        self.stop_ids = np.array(
            sorted(t for t in stop_tokens if isinstance(t, int) and t >= 0), np.int32
        )
        # Plain closures over the graph definition (not jitted methods with a static `self`, which
        # would keep the sampler and its parameters alive in the jit cache after mining ends).
        graphdef, stops = self.model.graphdef, tuple(int(t) for t in self.stop_ids)
        decoding = (sampling.temperature, sampling.top_p, sampling.top_k)
        stop_array = functools.partial(jnp.asarray, stops, jnp.int32)
        backbone = self.model.spec.backbone
        self._state = functools.partial(
            _new_state,
            self.batch_size,
            budget=sampling.max_new_tokens,
            layers=backbone.num_layers,
            kv_shape=(backbone.num_kv_heads, backbone.head_dim),
            dtype=jnp.dtype(backbone.dtype),
        )
        # Outputs keep the state's shardings, so a state passed back in compiles nothing new.
        state_shardings = jax.tree.map(
            lambda x: self._rows if x.ndim else self._replicated,
            jax.eval_shape(functools.partial(self._state, 1)),
        )
        self._admit = jax.jit(
            lambda params, state, ids, seg, rows, keys: _admit(
                graphdef, decoding, stop_array(), params, state, ids, seg, rows, keys
            ),
            donate_argnums=1,
            out_shardings=state_shardings,
        )
        self._steps = jax.jit(
            lambda params, state: _steps(
                graphdef, decoding, stop_array(), check_every, params, state
            ),
            donate_argnums=1,
            out_shardings=state_shardings,
        )
        self._new_state = jax.jit(self._state, static_argnums=0, out_shardings=state_shardings)
        self._choose = jax.jit(
            functools.partial(
                choose, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k
            )
        )
        self._full_forward = jax.jit(functools.partial(_full_forward, graphdef))
        self._capacity = 0  # prompt slots of the cache (grows to the longest prompt bucket seen)

    # ----- public API
    # ------------------------------------------------------------------------------
    def encode_prompt(self, prompt: str) -> list[int]:
        if self.use_chat_template:
            ids = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}],
                tokenize=True,
                add_generation_prompt=True,
                return_dict=True,
                enable_thinking=self.enable_thinking,  # ignored by templates without the switch
            )["input_ids"]
            return list(ids)
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def generate_ids(
        self, prompt_ids: list[list[int]], seeds: list[int], use_cache: bool = True
    ) -> list[list[int]]:
        """New token ids per prompt (without the stop token), in input order."""
        if not prompt_ids:
            return []
        if not use_cache:
            return self._generate_uncached(prompt_ids, seeds)
        self._capacity = max(
            self._capacity, prompt_bucket(max(len(p) for p in prompt_ids), *self.prompt_buckets)
        )
        queue = collections.deque(sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i])))
        results: list = [None] * len(prompt_ids)
        row_of = [-1] * self.batch_size
        with sharding.use_rules(self.model.mesh, self.model.logical_rules):
            state = self._empty_state()
            while queue or any(i >= 0 for i in row_of):
                free = [r for r in range(self.batch_size) if row_of[r] < 0]
                while free and queue:
                    group = [
                        queue.popleft() for _ in range(min(len(free), self.admit_size, len(queue)))
                    ]
                    state = self._admit_group(state, group, free[: len(group)], prompt_ids, seeds)
                    for r, i in zip(free, group):
                        row_of[r] = i
                    free = free[len(group) :]
                state = self._steps(self.model.params, state)
                done, count = jax.device_get((state["done"], state["count"]))
                done = done | self._hit_stop(state, row_of, count)
                finished = [r for r in range(self.batch_size) if row_of[r] >= 0 and done[r]]
                if finished:
                    out = jax.device_get(state["out"])
                    for r in finished:
                        results[row_of[r]] = [int(t) for t in out[r, : count[r]]]
                        row_of[r] = -1
        return results

    def generate(self, prompts, documents, seeds) -> list[str]:
        del documents  # the prompt already holds the document
        ids = self.generate_ids([self.encode_prompt(p) for p in prompts], list(seeds))
        texts = []
        for row in ids:
            text = self.tokenizer.decode(row, skip_special_tokens=False)
            for stop in self.sampling.stop:  # cut at the first stop string
                text = text.split(stop)[0]
            texts.append(strip_thinking(text))
        return texts

    # ----- internals
    # -------------------------------------------------------------------------------
    def _empty_state(self) -> dict:
        return self._new_state(self._capacity + self.sampling.max_new_tokens)

    def _admit_group(self, state, group, rows, prompt_ids, seeds):
        fill = self.admit_size - len(group)
        prompts = [prompt_ids[i] for i in group] + [prompt_ids[group[0]]] * fill
        length = prompt_bucket(max(len(p) for p in prompts), *self.prompt_buckets)
        ids, seg, _ = pad_batch(prompts, length, self.pad_id, left=True)
        rows = np.array(list(rows) + [self.batch_size] * fill, np.int32)  # B: dropped
        keys = np.stack([row_key(seeds[i]) for i in group] + [row_key(0)] * fill)
        put = functools.partial(jax.device_put, device=self._rows)
        return self._admit(self.model.params, state, put(ids), put(seg), put(rows), put(keys))

    def _hit_stop(self, state, row_of, count) -> np.ndarray:
        """Rows whose text so far holds a stop string (read only when stop strings are set)."""
        hit = np.zeros(len(row_of), bool)
        if not self.sampling.stop:
            return hit
        out = jax.device_get(state["out"])
        for r, i in enumerate(row_of):
            if i >= 0:
                text = self.tokenizer.decode(out[r, : count[r]])
                hit[r] = any(s in text for s in self.sampling.stop)
        return hit

    def _generate_uncached(self, prompt_ids, seeds) -> list[list[int]]:
        """The reference path: the whole sequence is recomputed for every new token (left-padded
        to a multiple of 16, so a few programs serve every step)."""
        rows, seqs = len(prompt_ids), [list(p) for p in prompt_ids]
        keys = jnp.asarray(np.stack([row_key(s) for s in seeds]))
        out, done = [[] for _ in range(rows)], np.zeros(rows, bool)
        with sharding.use_rules(self.model.mesh, self.model.logical_rules):
            for t in range(self.sampling.max_new_tokens):
                length = -(-max(map(len, seqs)) // 16) * 16
                ids, seg, _ = pad_batch(seqs, length, self.pad_id, left=True)
                logits = self._full_forward(self.model.params, jnp.asarray(ids), jnp.asarray(seg))
                step_keys = jax.vmap(jax.random.fold_in)(keys, jnp.full(rows, t))
                token = np.asarray(self._choose(logits, step_keys))
                for r in np.flatnonzero(~done):
                    if token[r] in self.stop_ids:
                        done[r] = True
                    else:
                        out[r].append(int(token[r]))
                        seqs[r].append(int(token[r]))
                if done.all():
                    break
        return out
