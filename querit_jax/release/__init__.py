"""Release: export to Hugging Face with a model card, parity verification, publishing checks and
push."""
