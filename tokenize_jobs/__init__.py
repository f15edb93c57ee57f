"""Modality tokenizers, their training, and the pre-tokenization job writing the token store."""
