"""The built-in synthetic zero-shot benchmark: its generator (data), its runner (run) and its CLI (make_data)."""
