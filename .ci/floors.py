"""The dependency floors of setup.cfg as exact pins, and the library's own tests.

  python3 .ci/floors.py requirements   # jax==0.9.0 jaxlib==0.9.0 ... (from install_requires)
  python3 .ci/floors.py tests          # the library tests run at the floors

Used by .ci/floors; tests/repo/test_packaging.py checks that LIBRARY_TESTS (tests/lib/)
is exactly the set of test modules that import neither experiments/, benchmarks/ nor torch,
and that FLOOR_TESTS, a part of them, calls every public function they call.
"""

import configparser
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The library's own tests: the modules of tests/lib/, which import maml_jax and
# the tests' own helpers only (tests/repo/test_packaging.py checks it).
LIBRARY_TESTS = tuple(sorted(
    p.relative_to(ROOT).as_posix() for p in (ROOT / 'tests' / 'lib').glob('test_*.py')))
# What .ci/floors runs at the oldest versions (BUILD.md, "Dependency floors"):
# every public function the library tests call, each at least once, and what
# failed one version below a floor (vmap over shard_map for jax, optax.tree for
# optax, Flax models for flax), in about a quarter of the library tests' time.
# Left out: repetitions (more parameters, more estimators through the same
# code), statistics (Monte Carlo bias and error trends) and conv op cases
# beyond two, which the full suite runs at the newest versions.
FLOOR_TESTS = (
    'tests/lib/test_adaptation_curve.py',
    'tests/lib/test_contract.py',  # every estimator, learned step sizes, float64, errors
    'tests/lib/test_estimators.py::test_quadratic_closed_form',
    'tests/lib/test_estimators.py::test_per_step_support_and_hessian_closed_form',
    'tests/lib/test_estimators.py::test_sampled_batches_match_manual_resampling',
    'tests/lib/test_estimators.py::test_registry_builds_every_estimator_and_names_bad_input',
    'tests/lib/test_meta.py::test_shard_map_with_axis_name_equals_unsharded[maml]',
    'tests/lib/test_models.py::test_sine_mlp_shapes_and_loss',
    'tests/lib/test_models.py::test_convnet_parameters_for_omniglot_and_miniimagenet',
    'tests/lib/test_models.py::test_batch_norm_uses_this_batch_statistics',
    'tests/lib/test_models.py::test_convnet_loss_with_accuracy_aux_runs_in_an_estimator',
    'tests/lib/test_nn.py::ConvOpTest::test_matches_lax_to_second_order_same_3x3',
    'tests/lib/test_nn.py::ConvOpTest::test_matches_lax_to_second_order_dilated_grouped',
    'tests/lib/test_nn.py::ConvOpTest::test_backward_convolutions_are_canonical',
    'tests/lib/test_nn.py::MaxPoolTest::test_against_reference_with_ties0',
    'tests/lib/test_nn.py::MaxPoolTest::test_same_padding_matches_flax',
    'tests/lib/test_nn.py::AutoTaskBatchingTest::test_library_conv_gets_map_without_warning',
    'tests/lib/test_nn.py::AutoTaskBatchingTest::test_plain_lax_conv_warns_with_the_fix',
    'tests/lib/test_nn.py::AutoTaskBatchingTest::test_bad_task_batching_is_named',
    'tests/lib/test_oracles.py::test_exact_and_fd_are_exact_on_quadratic',
    'tests/lib/test_oracles.py::test_gaussian_directions_shape_dtype_and_moments',
    'tests/lib/test_oracles.py::test_ggs_unbiased_and_zo_biased_on_quadratic',
    'tests/lib/test_oracles.py::test_ggs_maml_refuses_a_delta_lost_to_rounding',
    'tests/lib/test_sharding.py::test_fused_train_on_mesh_equals_one_device_under_vmap_over_seeds',
    'tests/lib/test_sharding.py::test_process_local_tasks_make_the_global_batch',
    'tests/lib/test_sharding.py::test_train_step_on_mesh_splits_a_lax_map_over_the_devices',
    'tests/lib/test_step_sizes.py::test_fo_maml_step_size_gradient_is_first_order_closed_form',
    'tests/lib/test_step_sizes.py::test_hf_maml_is_exact_on_quadratics_with_learned_step_sizes',
    'tests/lib/test_step_sizes.py::test_step_size_forms_and_errors',
    'tests/lib/test_step_sizes.py::test_zo_step_size_gradient_has_the_constant_level_bias',
    'tests/lib/test_tasks.py::test_sine_tasks_distribution',
    'tests/lib/test_tasks.py::test_fewshot_tasks_shapes_and_label_structure',
    'tests/lib/test_training.py::test_fused_run_equals_loop_of_steps_and_resumes_exactly',
    'tests/lib/test_training.py::test_meta_training_reduces_meta_loss',
    'tests/lib/test_training.py::test_all_nonfinite_tasks_skip_the_update',
    'tests/lib/test_training.py::test_step_compiles_once_for_new_data_and_keys',
)
# What the library tests need besides the library (not pinned: test tools).
TEST_TOOLS = ('pytest', 'pytest-xdist', 'absl-py')


def floor_pins(setup_cfg=ROOT / 'setup.cfg'):
  """['jax==0.9.0', ...]: every install_requires entry 'name>=v' as 'name==v'."""
  cfg = configparser.ConfigParser()
  cfg.read(setup_cfg)
  pins = []
  for line in cfg['options']['install_requires'].splitlines():
    line = line.strip()
    if not line:
      continue
    match = re.fullmatch(r'([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)', line)
    if match is None:
      raise SystemExit(f'setup.cfg install_requires: {line!r} is not name>=version')
    pins.append(f'{match[1]}=={match[2]}')
  return pins


if __name__ == '__main__':
  what = sys.argv[1] if len(sys.argv) > 1 else ''
  if what == 'requirements':
    print(' '.join(floor_pins() + list(TEST_TOOLS)))
  elif what == 'tests':
    print(' '.join(FLOOR_TESTS))
  else:
    raise SystemExit('usage: floors.py requirements|tests')
