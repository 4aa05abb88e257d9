"""Data: Dolma reading, tokenizer, packing, Paloma windows, row loading, the embedded corpus."""
