"""Evaluation: IR metrics (pytrec-eval-terrier), run files, batched JAX scoring and the rerank
protocol."""
