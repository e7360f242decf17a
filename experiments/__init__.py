"""The paper's experiments (SPEC.md section 4), built on maml_jax. Not part of the library."""
