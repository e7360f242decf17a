"""The paper's experiments (docs/design.md, 'Experiments'), built on maml_jax. Not part of the library."""
