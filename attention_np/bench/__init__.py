"""Benchmarks (printed, never asserted): ``python -m attention_np.bench [sdpa|efficient]``."""
