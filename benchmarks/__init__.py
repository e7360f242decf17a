"""Timing and memory benchmarks of maml_jax, including the PyTorch comparison."""
