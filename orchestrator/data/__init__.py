"""Data sources (synthetic people, TOFU, text corpora), the local tokenizer, and tokenisation into batches."""
