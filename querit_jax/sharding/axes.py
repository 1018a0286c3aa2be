"""The logical-axis vocabulary. Model code names array dimensions only with these constants.

Parameters and activations use different names for the model width so that fsdp can shard a weight's
`embed` dimension while activations stay sharded over the batch (the MaxText convention). Which mesh
axis (if any) each name maps to is data: see `rules.py`.
"""

# Parameter dimensions.
EMBED = "embed"  # model width (hidden size) of a weight
MLP = "mlp"  # feed-forward intermediate size
HEADS = "heads"  # query heads
KV_HEADS = "kv_heads"  # key/value heads (GQA)
HEAD_DIM = "head_dim"  # per-head size
VOCAB = "vocab"  # vocabulary rows of an embedding table / LM head
NORM = "norm"  # RMSNorm / LayerNorm scales (never sharded)
LABELS = "labels"  # output units of a scoring head
LAYERS = "layers"  # stacked-layer axis when layers are scanned
EXPERT = "expert"  # MoE expert index
EXPERT_MLP = "expert_mlp"  # per-expert intermediate size

# Activation dimensions.
BATCH = "batch"  # rows (pairs, packed rows)
LENGTH = "length"  # sequence positions
ACT_EMBED = "act_embed"  # model width of an activation
ACT_HEADS = "act_heads"
ACT_KV_HEADS = "act_kv_heads"
ACT_MLP = "act_mlp"
ACT_VOCAB = "act_vocab"

PARAM_AXES = (
    EMBED,
    MLP,
    HEADS,
    KV_HEADS,
    HEAD_DIM,
    VOCAB,
    NORM,
    LABELS,
    LAYERS,
    EXPERT,
    EXPERT_MLP,
)
ACTIVATION_AXES = (BATCH, LENGTH, ACT_EMBED, ACT_HEADS, ACT_KV_HEADS, ACT_MLP, ACT_VOCAB)
ALL_AXES = PARAM_AXES + ACTIVATION_AXES

# Mesh axes, in mesh order. Only rule presets, configs and shard_map specs name these.
MESH_AXES = ("data", "fsdp", "tensor", "expert")
