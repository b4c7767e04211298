"""Decoding engines behind one small interface. `hf` (transformers) is the reference; serving engines
are optional extras and are skipped with a reason when not installed."""
