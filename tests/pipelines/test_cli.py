"""pipelines.cli: exit codes by the error taxonomy (pradot.errors) and --help on every console script."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import tomllib

from pipelines import cli
from pipelines.checks import ConfigError
from pradot.device import DeviceError
from pradot.errors import InputError, NotFittedError
from pradot.fewshot.foreground import ForegroundError

SCRIPTS = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("script", sorted(SCRIPTS))
@pytest.mark.parametrize("option", ["--help", "-h"])
def test_every_console_script_has_help(script, option, capsys, monkeypatch):
    module, func = SCRIPTS[script].split(":")
    monkeypatch.setattr("sys.argv", [script, option])
    main = getattr(importlib.import_module(module), func)
    try:
        rc = main([option]) if module.startswith("pipelines.") else main()
    except SystemExit as e:  # argparse scripts exit from parse_args
        rc = e.code
    out = capsys.readouterr().out
    assert rc == 0, out
    assert out.startswith("usage:")
    if module.startswith("pipelines."):  # the Hydra entry points: their name, key=value and the exit codes
        assert script in out and "key=value" in out and "exit codes" in out


def _raising(exc):
    def run(argv):
        raise exc

    return run


@pytest.mark.parametrize(
    "exc",
    [
        InputError("bad value"),
        cli.UsageError("bad option"),
        ConfigError("model.alpha: 2"),
        DeviceError("no CUDA"),
        ForegroundError("no SAM checkpoint"),
        FileNotFoundError("no such file"),
    ],
)
def test_bad_input_exits_2_with_the_message_and_no_traceback(exc, capsys):
    assert cli.run_entry(_raising(exc), []) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert f"error: {exc}" in err and "Traceback" not in err


def test_a_value_error_that_is_not_bad_input_is_a_bug_with_its_traceback(capsys):
    """A ValueError from deep in a library is not reported as bad input: it propagates (exit 1, traceback)."""
    with pytest.raises(ValueError, match="operands could not be broadcast"):
        cli.run_entry(_raising(ValueError("operands could not be broadcast")), [])
    assert not cli.is_user_error(ValueError("x")) and cli.is_user_error(InputError("x"))


def test_a_value_error_of_the_data_package_is_still_bad_input(capsys):
    """The data package predates InputError: its ValueErrors (an unknown augmentation, ...) keep exit code 2."""
    from pradot.data.augment import build_train_augmentation

    def run(argv):
        build_train_augmentation("no_such_augmentation")

    rc = cli.run_entry(run, [])
    err = capsys.readouterr().err
    assert rc == cli.EXIT_BAD_INPUT, err


def test_a_failed_run_exits_1_with_its_message(capsys):
    assert cli.run_entry(_raising(NotFittedError("call fit first")), []) == cli.EXIT_FAILED
    assert "error: call fit first" in capsys.readouterr().err
