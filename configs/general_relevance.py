"""General relevance training: listwise groups (1 positive + k hard negatives) on ranking data.

Variants (`--config=configs/general_relevance.py:VARIANT`):
  (none)  Qwen3-0.6B reranker on TPU: start from an imported checkpoint
  (tools/convert_hf/import_hf.py)
          and train on FlagEmbedding-format groups (e.g. MS MARCO / multilingual hard negatives).
  demo    CPU, under 10 minutes: a tiny Qwen3 cross-encoder trained from scratch on XQuAD-R
  questions
          of four languages (en, ru, zh, ar; train articles) with BM25 hard negatives, evaluated on
          held-out articles by reranking BM25's top 20: in four languages it never saw (de, es, tr,
          vi) and in two it saw (en, zh), next to BM25 and the untrained model.
  minilm  CPU, about 4 minutes: stage 1 of the demo loop (configs/loop.py:demo). all-MiniLM-L6-v2
          (an English sentence embedder) with a new score head on its CLS token, trained as a
          cross-encoder on the labelled training articles of six XQuAD-R languages (en, de, ru, zh,
          ar, tr) with BM25 hard negatives; es and vi are left for label-free adaptation.
  tiny    the demo's model on two of its four training sources, a few steps (smoke tests).
  tiny_moe  a tiny Qwen3-MoE (8 experts, top-2) on the demo data, experts sharded with fsdp+ep over
          all devices (`--config.sharding.mesh.expert=N`), the load-balancing loss on.
  qwen3_4b  TPU/GPU pod: Qwen3-4B from checkpoints/qwen3-4b, parameters and optimiser state sharded
          over all devices (fsdp), layers rematerialised. Tensor parallelism on top for long inputs
          or small batches: --config.sharding.preset=fsdp+tp --config.sharding.mesh.tensor=4 (heads
          and MLP width split 4 ways; the fsdp axis takes the remaining devices).
  qwen3_30b_a3b  TPU/GPU pod: Qwen3-30B-A3B from checkpoints/qwen3-30b-a3b, experts split over 8
          devices (fsdp+ep, expert parallel with a capacity factor of 1.25), the rest fsdp.

Memory: `python -m querit_jax.plan --config=configs/general_relevance.py:VARIANT --mesh=fsdp=64
--num_devices=64` prints the per-device bytes (parameters, optimiser state, gradients, activations)
of any variant on any mesh; the trainer prints the same plan and refuses a run that cannot fit.
"""

import ml_collections

VARIANTS = (
    None,
    "demo",
    "minilm",
    "tiny",
    "tiny_moe",
    "qwen3_4b",
    "qwen3_30b_a3b",
)  # documented above; tests load and validate each
DEMO_TRAIN = ",".join(f"data/xquad_r/{lang}/train" for lang in ("en", "ru", "zh", "ar"))
MINILM_LANGUAGES = ("en", "de", "ru", "zh", "ar", "tr")
MINILM_WEIGHTS = "../shared/models/all-MiniLM-L6-v2"  # the loop resolves a fallback (loading.py)
DEMO_EVAL = ",".join(f"data/xquad_r/{lang}/test" for lang in ("de", "es", "tr", "vi", "en", "zh"))


def get_config(arg=None):
    variant = arg or "default"
    if variant not in ("default", *VARIANTS[1:]):
        raise ValueError(f"Unknown variant {variant!r}; use one of {VARIANTS[1:]} (or none).")
    c = ml_collections.ConfigDict()
    c.name = f"general_relevance_{variant}"

    c.model = ml_collections.ConfigDict()
    # Model family (qwen3).
    c.model.family = "qwen3"
    # Architecture preset (models/decoder_config.py), used when init_from is empty.
    c.model.preset = "qwen3_0p6b"
    # Preset fields to change (prefer a named preset to architecture numbers). Runtime fields also
    # apply to a model loaded from init_from (models/spec.py RUNTIME_FIELDS): moe_impl (dense,
    # grouped, ep), moe_capacity_factor (ep: expert buffer size over the even share; <= 0 dropless),
    # attention_impl (auto: the backend's fused kernel; xla; cudnn; splash; reference).
    c.model.overrides = ml_collections.ConfigDict()
    # Model checkpoint or Hugging Face dir to start from; "" = random initialisation.
    c.model.init_from = "checkpoints/qwen3-0.6b"
    # score (linear head on the last token) or yes_no (Qwen3-Reranker logit[yes] - logit[no]).
    c.model.head = "score"
    # Tokens the yes_no head reads.
    c.model.yes_token = "yes"
    c.model.no_token = "no"
    # Tokenizer dir; "" = the one stored with init_from.
    c.model.tokenizer = ""
    # Pair template (data/templates.py) and an optional task instruction inside it.
    c.model.template = "qwen3_pair"
    c.model.instruction = ""
    # Compute dtype; parameters are kept in param_dtype, softmax and norm statistics in float32.
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "float32"
    # Rematerialise each layer in the backward pass (less activation memory), with a policy: full
    # (recompute everything), dots_saveable or dots_with_no_batch_dims_saveable (keep matmul
    # outputs).
    c.model.remat = True
    c.model.remat_policy = "full"
    # Run the layers with jax.lax.scan instead of a Python loop: one layer is compiled instead of N
    # (compile time flat in depth), for one extra stacked copy of the layer weights in memory during
    # the step. Same numbers, same checkpoint/parameter layout (model.layers.0, .1, ...).
    c.model.scan_layers = False
    # Initialisation seed (random init and new heads).
    c.model.seed = 0

    c.data = ml_collections.ConfigDict()
    # Comma list: DIR[:split] (BEIR, groups are mined) or FILE.jsonl (FlagEmbedding groups).
    c.data.train = "data/general_relevance/train.jsonl"
    # Negatives for BEIR sources: bm25 (hard) or random; how many to keep per query (the best
    # non-relevant ones among BM25's top negative_depth, topped up at random).
    c.data.negatives = "bm25"
    c.data.num_negatives = 15
    c.data.negative_depth = 30
    # 1 positive + group_size - 1 negatives per query; query groups per step over all hosts.
    c.data.group_size = 16
    c.data.batch_size = 128
    # Tokens per (query, document) pair, template included; queries are cut to max_query_tokens.
    c.data.max_length = 512
    c.data.max_query_tokens = 64
    # Tokenizer for BM25 mining; "" = the model's.
    c.data.bm25_tokenizer = ""
    # False: skip malformed rows and count them in the data manifest.
    c.data.strict = True
    # grain reader threads.
    c.data.num_threads = 8
    c.data.seed = 0
    # Packing: several pairs per row (segment ids keep them apart; scores are identical to unpacked
    # ones). Each step takes the smallest of a few row counts (estimated from the first batches)
    # that holds its pairs, and a step needing more takes the most any step can need: no batch
    # stops a run; pack_rows > 0: one row count for every step. pack_length: tokens per row
    # (0 = the shortest of 1-4 x max_length packing the first batches to >= 0.94 real tokens;
    # longer rows cost attention in proportion). pack_max_pairs: pairs per row at most. Also packs
    # the evaluation's scoring.
    c.data.pack = False
    c.data.pack_rows = 0
    c.data.pack_length = 0
    c.data.pack_max_pairs = 8

    c.optim = ml_collections.ConfigDict()
    # Peak learning rate, linear warmup, then cosine/linear/constant decay to end_lr_ratio * peak.
    c.optim.learning_rate = 2e-5
    c.optim.warmup_steps = 500
    c.optim.schedule = "cosine"
    c.optim.end_lr_ratio = 0.1
    # AdamW (decoupled decay, not on norms/biases).
    c.optim.weight_decay = 0.01
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.eps = 1e-8
    # Global-norm clipping; 0 disables.
    c.optim.clip_norm = 1.0
    # Comma list of parameter-name substrings kept fixed, e.g. "embed_tokens".
    c.optim.freeze = ""

    c.train = ml_collections.ConfigDict()
    c.train.num_steps = 20_000
    # listwise_ce: softmax cross-entropy with the positive first; scores are divided by temperature.
    c.train.loss = "listwise_ce"
    c.train.temperature = 1.0
    # Progress line + TensorBoard scalars every log_every steps.
    c.train.log_every = 50
    # nDCG@10 on eval.datasets every eval_every steps (0 = only before and after training).
    c.train.eval_every = 2000
    # Checkpoint interval (steps) and how many checkpoints to keep.
    c.train.save_every = 1000
    c.train.keep_checkpoints = 3
    c.train.async_checkpoints = True
    # Persistent compilation cache in <workdir>/compilation_cache (gs:// too): a relaunch after a
    # preemption loads the compiled programs instead of compiling them again.
    c.train.compilation_cache = True
    # A step with a non-finite loss or gradients leaves the state unchanged and is counted; this
    # many in a row stop the run with an error.
    c.train.max_nonfinite_steps = 5
    c.train.seed = 0

    c.eval = ml_collections.ConfigDict()
    # Comma list of BEIR DIR[:split] reranked during and after training.
    c.eval.datasets = ""
    # BM25 depth that is reranked; pairs per scoring call; first stage; 0 = all judged queries.
    c.eval.top_k = 100
    c.eval.batch_size = 256
    c.eval.first_stage = "bm25"
    # BM25's analyser: "unicode" (built in, every language; independent of the evaluated model, so
    # every model of a comparison reranks the same candidates), a tokenizer directory, or "model".
    c.eval.bm25_tokenizer = "unicode"
    c.eval.max_queries = 0

    c.sharding = ml_collections.ConfigDict()
    # dp, fsdp, fsdp+tp or fsdp+ep (sharding/rules.py). fsdp splits every weight and its AdamW
    # moments along the model width over the `fsdp` axis (the batch over data x fsdp); fsdp+tp also
    # splits heads and the MLP width over `tensor` (for 4B+ models with few sequences per device).
    c.sharding.preset = "fsdp"
    # Mesh axis sizes; -1 = all remaining devices. Parameters and optimiser state are sharded over
    # all devices (fsdp=-1, data=1): fp32 Qwen3-4B + AdamW is ~64 GB, which no chip holds
    # replicated. dcn_data = slices of a multislice job that the data axis spans (launch/tpu.py
    # --num_slices=N; 1 = one slice; then set data=N and fsdp=-1: fsdp stays inside a slice).
    c.sharding.mesh = ml_collections.ConfigDict(
        dict(data=1, fsdp=-1, tensor=1, expert=1, dcn_data=1)
    )
    # Logical axis -> mesh axis overrides of the preset, e.g. {"vocab": "tensor"}.
    c.sharding.rule_overrides = ml_collections.ConfigDict()

    if variant in ("demo", "tiny", "tiny_moe"):
        c.model.preset = "tiny_demo"  # width 64, 2 layers, the tokenizer's 16384-token vocabulary
        c.model.init_from = ""
        c.model.tokenizer = "data/tokenizers/xquad_r_bpe"
        c.model.dtype = "float32"
        c.model.remat = False
        c.data.train = DEMO_TRAIN
        c.data.group_size = 8
        c.data.batch_size = 8
        c.data.max_length = 96
        c.data.max_query_tokens = 40
        c.data.num_threads = 2
        c.optim.learning_rate = 2e-3
        c.optim.warmup_steps = 100
        c.optim.end_lr_ratio = 0.1
        c.train.num_steps = 1500
        c.train.log_every = 100
        c.train.eval_every = 0
        c.train.save_every = 500
        c.eval.datasets = DEMO_EVAL
        c.eval.top_k = 20
        c.eval.batch_size = 128
        c.sharding.preset = "dp"
        c.sharding.mesh = ml_collections.ConfigDict(
            dict(data=-1, fsdp=1, tensor=1, expert=1, dcn_data=1)
        )
    if variant == "minilm":
        minilm_section(c)
    if variant == "tiny_moe":
        c.model.preset = "tiny_moe_demo"  # 8 experts, top-2, the tokenizer's 16384-token vocabulary
        c.model.overrides = ml_collections.ConfigDict(dict(moe_impl="ep"))  # expert parallel
        c.data.batch_size = 8
        c.data.group_size = 4
        c.data.max_length = 64
        c.train.num_steps = 20
        c.train.log_every = 5
        c.train.save_every = 10
        c.eval.datasets = "data/xquad_r/zh/test"
        c.eval.max_queries = 16
        c.eval.top_k = 10
        c.sharding.preset = "fsdp+ep"
        c.sharding.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, expert=-1))
    if variant == "qwen3_4b":
        c.model.preset = "qwen3_4b"  # the architecture when init_from has none (planning)
        c.model.init_from = "checkpoints/qwen3-4b"  # import_hf.py --hf_dir=Qwen/Qwen3-4B
    if variant == "qwen3_30b_a3b":
        c.model.preset = "qwen3_30b_a3b"
        c.model.init_from = "checkpoints/qwen3-30b-a3b"
        # Expert parallel: each token copy goes to its expert's device (all-to-all); each expert
        # takes at most 1.25x its even share of a device's copies (dropped copies are counted).
        c.model.overrides = ml_collections.ConfigDict(dict(moe_impl="ep", moe_capacity_factor=1.25))
        c.sharding.preset = "fsdp+ep"
        c.sharding.mesh = ml_collections.ConfigDict(
            dict(data=1, fsdp=-1, tensor=1, expert=8, dcn_data=1)
        )
    if variant == "tiny":
        # Two of the four sources (a few steps read 16 groups of ~2,000; four took 7 s to build).
        c.data.train = ",".join(f"data/xquad_r/{lang}/train" for lang in ("en", "zh"))
        c.data.batch_size = 4
        c.data.group_size = 4
        c.data.max_length = 64
        c.train.num_steps = 4
        c.train.log_every = 1
        c.train.eval_every = 2
        c.train.save_every = 2
        c.eval.datasets = "data/xquad_r/zh/test"
        c.eval.max_queries = 8
        c.eval.top_k = 5
    return c


def minilm_section(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The demo's MiniLM cross-encoder (stage 1 and the adaptations that start from it)."""
    c.model.family = "bert"
    c.model.preset = "minilm_l6"
    c.model.init_from = MINILM_WEIGHTS
    c.model.tokenizer = ""
    c.model.template = "encoder_pair"
    c.model.head = "score"  # a new linear head on the pooled CLS token
    c.model.dtype = "float32"
    c.model.remat = False
    c.data.train = ",".join(f"data/xquad_r/{lang}/train" for lang in MINILM_LANGUAGES)
    c.data.bm25_tokenizer = "unicode"
    c.data.group_size = 8
    c.data.batch_size = 8
    c.data.max_length = 64
    c.data.max_query_tokens = 32
    c.data.num_threads = 2
    c.optim.learning_rate = 8e-5
    c.optim.warmup_steps = 10
    c.optim.end_lr_ratio = 0.1
    c.train.num_steps = 100
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.save_every = 50
    c.train.keep_checkpoints = 1
    c.eval.datasets = ""
    c.eval.top_k = 10
    c.eval.batch_size = 16  # 1.3x the pairs/s of 64 on 2 CPU cores (configs/loop.py)
    c.sharding.preset = "dp"
    c.sharding.mesh = ml_collections.ConfigDict(
        dict(data=-1, fsdp=1, tensor=1, expert=1, dcn_data=1)
    )
    return c
