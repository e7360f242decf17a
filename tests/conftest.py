"""Test-session setup: 4 host CPU devices, so sharding tests run on any machine.

This must run before jax is imported anywhere in the test process.
"""
import os

_FLAG = '--xla_force_host_platform_device_count=4'
if _FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' ' + _FLAG).strip()
