"""Qwen3-Embedding-style embedder: the Qwen3 decoder read at each segment's last real token,
L2-normalised.

As the Qwen3-Embedding model card: queries carry an instruction (`Instruct:
{task}\\nQuery:{query}`), documents do not, the tokenizer's end token closes both, and the embedding
is the final hidden state of that last token (found from the attention mask, not from the pad id,
see `heads.pool`).
"""

from flax import nnx

from querit_jax.models.decoder import Qwen3Decoder
from querit_jax.models.decoder_config import DecoderConfig
from querit_jax.models.heads import HeadConfig, pool


class DecoderEmbedder(nnx.Module):
    def __init__(self, cfg: DecoderConfig, head: HeadConfig, *, rngs: nnx.Rngs):
        if head.kind != "embed":
            raise ValueError(f"DecoderEmbedder needs an 'embed' head, not {head.kind!r}.")
        self.head = head
        self.model = Qwen3Decoder(cfg, rngs=rngs)

    def __call__(
        self, input_ids, segment_ids, positions=None, num_segments: int = 1, token_type_ids=None
    ):
        """Returns embeddings [B, num_segments, H] (float32)."""
        del token_type_ids  # decoders have none
        hidden = self.model(input_ids, segment_ids, positions)
        return pool(hidden, segment_ids, num_segments, self.head.pooling, self.head.normalize)
