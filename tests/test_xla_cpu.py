"""`xla_cpu.use_eigen_convolutions` edits XLA_FLAGS without losing the user's flags;
`eigen_convolutions_enabled` reads it."""

from siriib_jax import xla_cpu
from siriib_jax.xla_cpu import FLAG, OPTION, use_eigen_convolutions


def test_appends_the_option_and_keeps_other_flags():
  environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  assert use_eigen_convolutions(environ)
  assert environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=8 {FLAG}"
  assert not use_eigen_convolutions(environ)  # Once is enough.
  assert environ["XLA_FLAGS"].count(OPTION) == 1


def test_sets_xla_flags_when_absent():
  environ = {}
  assert use_eigen_convolutions(environ)
  assert environ == {"XLA_FLAGS": FLAG}


def test_keeps_a_value_the_user_chose():
  environ = {"XLA_FLAGS": f"--{OPTION}=individual_convolution"}
  assert not use_eigen_convolutions(environ)
  assert environ["XLA_FLAGS"] == f"--{OPTION}=individual_convolution"


def test_reports_whether_the_eigen_path_is_set():
  assert xla_cpu.eigen_convolutions_enabled({"XLA_FLAGS": f"--a=1 {xla_cpu.FLAG} --b=2"})
  assert not xla_cpu.eigen_convolutions_enabled({})
  assert not xla_cpu.eigen_convolutions_enabled({"XLA_FLAGS": f"{xla_cpu.FLAG}xnn"})
