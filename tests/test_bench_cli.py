"""`easytune bench` command line: help texts and the environment record."""

import json

import pytest

from easytune.cli import main

ACTIONS = ("env", "ceilings", "methods", "time-to-reward", "kernels", "report", "compare")


def test_bench_help_lists_every_action(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for action in ACTIONS:
        assert action in out


@pytest.mark.parametrize("action", ACTIONS)
def test_action_help(action, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["bench", action, "--help"])
    assert exc.value.code == 0
    assert "usage: easytune bench " + action in capsys.readouterr().out


def test_env_prints_the_record(capsys):
    assert main(["bench", "env"]) == 0
    record = json.loads(capsys.readouterr().out)
    for key in ("date", "torch", "commit", "cpu", "device", "nvml"):
        assert key in record
    assert record["device"] == "cpu"


def test_methods_rejects_bad_cases(capsys):
    assert main(["bench", "methods", "--cases", "nope-3", "--json", "x.json"]) == 2
    assert "unknown method" in capsys.readouterr().err
