"""Shared test fixtures: the default config and small helpers."""

import os
import sys

import pytest

# The repository root holds `configs/`, which tests import like main.py does.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture
def config():
  return default.get_config()
