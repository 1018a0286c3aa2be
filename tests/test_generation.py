"""The JAX sampler against transformers' greedy `generate`, continuous batching, thinking switched
off in chat templates, and the heuristic generator."""

import pytest
import torch
import transformers

from querit_jax.data.prompts import BEGIN, END, make_prompt, parse_queries
from querit_jax.mining.generators import HeuristicGenerator, SamplingConfig
from querit_jax.mining.jax_sampler import JaxSampler
from tests.conftest import make_hf_qwen3

PROMPTS = [
    "Write a query about the Panthers defense",
    "黑豹队",
    "Сколько очков пропустила защита в этом сезоне?",
]


@pytest.fixture(scope="module")
def causal_lm(tmp_path_factory):
    return make_hf_qwen3(str(tmp_path_factory.mktemp("lm") / "hf"), "causal_lm", tie=False, std=0.2)


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_continuation_equals_transformers_generate(causal_lm, use_cache):
    # Two rows in flight for three prompts, host checks every 5 steps: a finished row is refilled.
    sampler = JaxSampler(
        causal_lm,
        SamplingConfig(max_new_tokens=12, temperature=0.0),
        batch_size=2,
        use_chat_template=False,
        check_every=5,
    )
    prompt_ids = [sampler.encode_prompt(p) for p in PROMPTS]
    assert (
        len({len(p) for p in prompt_ids}) == 3
    )  # unequal prompt lengths: left padding is exercised
    ours = sampler.generate_ids(prompt_ids, seeds=[0, 1, 2], use_cache=use_cache)

    tok = sampler.tokenizer
    tok.padding_side = "left"
    batch = tok.pad([{"input_ids": p} for p in prompt_ids], return_tensors="pt")
    model = transformers.Qwen3ForCausalLM.from_pretrained(causal_lm).eval()
    with torch.no_grad():
        ref = model.generate(
            **batch,
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=sampler.stop_ids.tolist(),
            pad_token_id=tok.pad_token_id,
        )
    for row in range(len(PROMPTS)):
        new = ref[row, batch["input_ids"].shape[1] :].tolist()
        stop = next((i for i, t in enumerate(new) if t in sampler.stop_ids), len(new))
        assert ours[row] == new[:stop], (row, ours[row], new)
    assert any(len(o) > 3 for o in ours)


@pytest.mark.parametrize("model_sharding", ["dp", "fsdp"])
def test_the_sampler_over_several_devices_decodes_as_on_one(causal_lm, model_sharding):
    """The miner lays its generator over all of a process's devices: rows split over them (dp) or
    the parameters too (fsdp, a generator too large for one device). Greedy continuations equal
    the one-device ones; with fsdp the weights really are split."""
    import jax

    sampling = SamplingConfig(max_new_tokens=8, temperature=0.0)
    one = JaxSampler(causal_lm, sampling, batch_size=4, use_chat_template=False)
    four = JaxSampler(
        causal_lm,
        sampling,
        batch_size=4,
        use_chat_template=False,
        devices=jax.local_devices()[:4],
        model_sharding=model_sharding,
    )
    ids = [one.encode_prompt(p) for p in PROMPTS]
    assert four.generate_ids(ids, seeds=[0, 1, 2]) == one.generate_ids(ids, seeds=[0, 1, 2])
    out = four._empty_state()["out"]  # generated tokens [rows, budget]: one row per device
    assert sorted(s.data.shape[0] for s in out.addressable_shards) == [1, 1, 1, 1]
    leaves = jax.tree.leaves(four.model.params)
    assert all(len(x.sharding.device_set) == 4 for x in leaves)
    split = any(not x.sharding.is_fully_replicated for x in leaves)
    assert split == (model_sharding == "fsdp")


def test_sampling_is_seeded_and_bounded(causal_lm):
    sampler = JaxSampler(
        causal_lm,
        SamplingConfig(max_new_tokens=6, temperature=1.0, top_p=0.9),
        use_chat_template=False,
    )
    ids = [sampler.encode_prompt(p) for p in PROMPTS]
    a = sampler.generate_ids(ids, seeds=[1, 2, 3])
    b = sampler.generate_ids(ids, seeds=[1, 2, 3])
    c = sampler.generate_ids(ids, seeds=[4, 5, 6])
    assert a == b and a != c and all(len(x) <= 6 for x in a)
    texts = sampler.generate(PROMPTS, ["", "", ""], [1, 2, 3])
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)


def test_heuristic_generator_and_query_parsing():
    docs = [
        "The Panthers defense gave up just 308 points, ranking sixth in the league.",
        "黑豹队的防守只丢了 308分，在联赛中排名第六。",
        "",
    ]
    gen = HeuristicGenerator(docs, num_queries=3, min_len=3, max_len=6)
    out = gen.generate(["p"] * 3, docs, [0, 0, 0])
    queries = [parse_queries(o) for o in out]
    assert len(queries[0]) == 3 and all(q.lower() in docs[0].lower() for q in queries[0])
    assert all(len(q) <= 6 for q in queries[1])  # CJK spans counted in characters
    assert (
        queries[2] == []
    )  # an empty document gives no queries (counted as malformed by the miner)
    assert gen.generate(["p"], docs[:1], [0]) == gen.generate(["p"], docs[:1], [0])
    assert parse_queries(f"junk {BEGIN} first  query {END}\n{BEGIN}{END}{BEGIN}second{END}") == [
        "first query",
        "second",
    ]
    assert parse_queries("no markers at all") == []
    prompt = make_prompt("fr_k12", num_queries=2).render("Le document.")
    assert "Le document." in prompt and "2" in prompt and BEGIN in prompt
    with pytest.raises(ValueError, match="no \\{content\\} slot"):
        make_prompt("mine", text="no slot here")


def test_sampler_reuses_programs_and_is_released(causal_lm):
    """One program per shape, the decode state donated, prompt buckets as configured, and nothing
    left holding the sampler once it is dropped."""
    import gc
    import weakref

    import jax

    from querit_jax.mining import jax_sampler
    from querit_jax.mining.jax_sampler import prompt_bucket, row_key

    sampler = JaxSampler(
        causal_lm, SamplingConfig(max_new_tokens=3, temperature=0.0), use_chat_template=False
    )
    ids = [sampler.encode_prompt(p) for p in PROMPTS]
    sampler.generate_ids(ids, seeds=[0, 1, 2])
    sampler.generate_ids([ids[0][:3], ids[2][1:]], seeds=[0, 1])  # other lengths, smaller batch
    assert sampler._admit._cache_size() == 1 and sampler._steps._cache_size() == 1
    assert [prompt_bucket(n) for n in (1, 33, 256, 257, 700)] == [32, 64, 256, 512, 768]
    assert not (row_key(5) == row_key(5 + 2**32)).all()  # seeds above 32 bits stay distinct
    # The decode state (KV cache, tokens) is donated: the state passed in is freed, not copied.
    state = sampler._empty_state()
    after = sampler._steps(sampler.model.params, state)
    assert all(x.is_deleted() for x in jax.tree.leaves(state))
    assert not any(x.is_deleted() for x in jax.tree.leaves(after))
    # Prompt buckets come from the config (mining.generator_prompt_min/step): doubling from 4 up
    # to 8, then multiples of 8; the same continuations.
    assert [prompt_bucket(n, 4, 8) for n in (1, 5, 8, 9, 17)] == [4, 8, 8, 16, 24]
    small = JaxSampler(
        causal_lm,
        SamplingConfig(max_new_tokens=3, temperature=0.0),
        use_chat_template=False,
        model=sampler.model,
        prompt_buckets=(4, 8),
    )
    lengths = []
    real_pad = jax_sampler.pad_batch
    with pytest.MonkeyPatch.context() as m:
        m.setattr(jax_sampler, "pad_batch", lambda s, n, *a, **k: lengths.append(n) or real_pad(
            s, n, *a, **k))  # fmt: skip
        got = small.generate_ids(ids, seeds=[0, 1, 2])
    assert got == sampler.generate_ids(ids, seeds=[0, 1, 2])
    longest = max(map(len, ids))
    assert max(lengths) == prompt_bucket(longest, 4, 8) < prompt_bucket(longest)
    assert all(n in (4, 8) or n % 8 == 0 for n in lengths)
    del small, state, after, got
    ref = weakref.ref(sampler)
    del sampler
    gc.collect()
    assert ref() is None  # nothing (e.g. a jit cache) keeps the LM's parameters alive


def test_tied_embedding_lm_generates_like_transformers(tmp_path):
    path = make_hf_qwen3(str(tmp_path / "tied"), "causal_lm", tie=True, std=0.2)
    sampler = JaxSampler(
        path, SamplingConfig(max_new_tokens=6, temperature=0.0), use_chat_template=False
    )
    prompt = sampler.encode_prompt(PROMPTS[0])
    ours = sampler.generate_ids([prompt], seeds=[0])[0]
    model = transformers.Qwen3ForCausalLM.from_pretrained(path).eval()
    with torch.no_grad():
        ref = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=6,
            do_sample=False,
            eos_token_id=sampler.stop_ids.tolist(),
            pad_token_id=sampler.tokenizer.pad_token_id,
        )[0, len(prompt) :].tolist()
    stop = next((i for i, t in enumerate(ref) if t in sampler.stop_ids), len(ref))
    assert ours == ref[:stop]


# The generation-prompt tail of Qwen3's chat template (its thinking switch), on the demo tokenizer.
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}{%- endif %}"
)


def test_rows_are_refilled_and_each_row_decodes_as_alone(causal_lm):
    """Sampled rows (temperature, top-k, top-p inside jit) give every prompt the same tokens with
    one row in flight (refilled five times, host checks every 3 steps) as in one wide batch: each
    row has its own key stream."""
    prompts = [*PROMPTS, "Panthers", "la defensa de los Panthers encajó 308 puntos", "防守"]
    sampling = SamplingConfig(max_new_tokens=7, temperature=1.0, top_p=0.9, top_k=50)
    narrow = JaxSampler(causal_lm, sampling, batch_size=1, use_chat_template=False, check_every=3)
    wide = JaxSampler(causal_lm, sampling, batch_size=8, use_chat_template=False)
    ids = [narrow.encode_prompt(p) for p in prompts]
    seeds = list(range(10, 16))
    assert narrow.generate_ids(ids, seeds) == wide.generate_ids(ids, seeds)
    assert narrow.admit_size == 1 and narrow._steps._cache_size() == 1


def test_chat_templates_are_rendered_with_thinking_off(causal_lm, tmp_path):
    import shutil

    from querit_jax.mining.generators import strip_thinking

    path = str(tmp_path / "qwen3_style")
    shutil.copytree(causal_lm, path)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    tok.chat_template = QWEN3_TEMPLATE
    tok.save_pretrained(path)
    from querit_jax import config_lib
    from querit_jax.mining.miner import build_generator

    cfg = config_lib.validate_mining(
        config_lib.MiningConfig(
            target="t", output="o", teacher="t", generator="jax", generator_model=path,
            max_new_tokens=4, temperature=0.0, generator_batch_size=3,
        )
    )  # fmt: skip
    off = build_generator(cfg, None, 1, None, 0)  # as the miner makes it: thinking off
    assert off.batch_size == 3 and off.sampling.max_new_tokens == 4
    on = JaxSampler(path, SamplingConfig(max_new_tokens=4), enable_thinking=True)
    text_off = off.tokenizer.decode(off.encode_prompt("a question"))
    text_on = on.tokenizer.decode(on.encode_prompt("a question"))
    assert text_off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert text_on.endswith("<|im_start|>assistant\n") and "<think>" not in text_on
    assert len(off.generate(["a question"], [""], [0])) == 1
    # Whatever a model still thinks is dropped before queries are parsed (closed or cut off).
    assert strip_thinking("<think>\nhmm</think>\n\n<|begin_of_query|>q<|end_of_query|>") == (
        "\n\n<|begin_of_query|>q<|end_of_query|>"
    )
    assert strip_thinking("<think>never closed <|begin_of_query|>q<|end_of_query|>") == ""
