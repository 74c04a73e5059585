"""The command line's number types: every spelling Python's int() and float() accept but a user does not mean."""

import argparse
import re
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from envconv.recipes import arguments
from envconv.recipes.cli import main


@given(st.integers(min_value=-10**30, max_value=10**30))
def test_decimal_integers_read_as_int_reads_them(value):
    assert arguments.integer(str(value)) == value
    assert arguments.integer(f"+{value}" if value >= 0 else str(value)) == value


@pytest.mark.parametrize("text", ["3_3", " 5", "5 ", "٣", "0x10", "1e3", "5.0", "", "+", "nan", "inf"])
def test_integer_refuses_what_int_would_read_otherwise(text):
    with pytest.raises(argparse.ArgumentTypeError, match="whole number in decimal digits"):
        arguments.integer(text)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_finite_floats_read_back_exactly(value):
    assert arguments.finite_float(repr(value)) == value


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity", "1e999", "1_0.5", " 0.5", "0x1p3", "", "."])
def test_finite_float_refuses_non_finite_and_odd_spellings(text):
    with pytest.raises(argparse.ArgumentTypeError, match="finite decimal number"):
        arguments.finite_float(text)


def test_the_range_types_name_their_rule():
    assert arguments.positive_int("1") == 1 and arguments.non_negative_int("0") == 0
    assert arguments.positive_float("1e-3") == 1e-3 and arguments.non_negative_float("0") == 0.0
    for parse, text, rule in [(arguments.positive_int, "0", "positive"),
                              (arguments.non_negative_int, "-1", "at least 0"),
                              (arguments.positive_float, "0", "above 0"),
                              (arguments.non_negative_float, "-0.5", "at least 0")]:
        with pytest.raises(argparse.ArgumentTypeError, match=rule):
            parse(text)


@pytest.mark.parametrize("argv", [
    ["eval", "run/last.pt", "--envelope-size", "3_3"],  # was evaluated at k_g = 33
    ["clips", "--out", "x", "--noise", "nan"],  # was recorded as finished runs with NaN loss
    ["clips", "--out", "x", "--test-count", "1_000"],
    ["mnist1d", "--seeds", "0-٣"],
    ["sigma-demo", "--steps", "-5"],
])
def test_the_commands_refuse_odd_numbers_before_doing_anything(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert re.search(r"error: argument --[a-z-]+: expected|error: argument --envelope-size: envelope size must",
                     capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_clips_refuses_more_clips_than_the_split_has(fashion_root, tmp_path):
    # the split has 64 test images: 65 were evaluated on 64 but recorded as 65
    done = subprocess.run([sys.executable, "-m", "envconv", "clips", "--data", str(fashion_root), "--out",
                           str(tmp_path / "out"), "--test-count", "65", "--train-count", "16", "--epochs", "1"],
                          capture_output=True, text=True)
    assert done.returncode == 2  # the command line's code for bad input
    assert "--test-count must be 1 to 64 (the test split's images), got 65" in done.stderr
    assert not (tmp_path / "out" / "results.json").exists()


@pytest.mark.parametrize("argv, message", [
    (["eval", "--checkpoint", "run/last.pt", "--envelope-size", "3_3"], "envelope size must be an odd integer"),
    (["clips", "--out", "x", "--noise", "nan"], "argument --noise: expected a finite decimal number, got 'nan'"),
])
def test_the_command_line_itself_exits_2_naming_the_odd_number(argv, message, tmp_path):
    done = subprocess.run([sys.executable, "-m", "envconv", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # no eval file (it was eval-last-k33.json), no clips results
