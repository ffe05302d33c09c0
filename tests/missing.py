"""What a test does when a tool or package it needs is not on the machine: under CI
(`.ci/run` installs everything the suite needs) the test fails; elsewhere it skips, saying
what to install. One rule for the whole suite."""
from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason)
    pytest.skip(reason, allow_module_level=True)
