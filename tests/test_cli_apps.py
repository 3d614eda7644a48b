"""The application commands are wired into the rnnkit command."""

import subprocess
import sys

import pytest

from rnnkit import apps


def rnnkit(*args):
    return subprocess.run(
        [sys.executable, "-m", "rnnkit", *args], capture_output=True, text=True, timeout=120
    )


def test_app_help_lists_every_application():
    result = rnnkit("app", "--help")
    assert result.returncode == 0
    for name in apps.APPS:
        assert name in result.stdout


@pytest.mark.parametrize("name", list(apps.APPS))
def test_each_application_has_its_own_help(name):
    result = rnnkit("app", name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"rnnkit app {name}" in result.stdout


def test_gradflow_help_and_bad_data_name():
    assert rnnkit("gradflow", "--help").returncode == 0
    result = rnnkit("data", "get", "nothing")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "invalid choice" in result.stderr
