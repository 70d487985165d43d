r"""Runs MatchMe self-training (or a single generation) from a config file.

python run.py --config=configs/synthetic.py --workdir=/tmp/matchme
python run.py --config=configs/synthetic.py:tiny --workdir=/tmp/tiny --config.train.steps=10

A bad input (a config file, field or value; a path; a damaged file) ends the run with one line,
`run.py: <what is wrong, and the fix>`, and exit status 2; `-v 1` (absl's debug level) shows the
traceback too.
"""

import contextlib
import logging as std_logging
import re
import sys
from pathlib import Path

from absl import app, flags, logging

from data_builders.common import DatasetFileError
from matchme_jax import config_checks, defaults, errors, experiment

# The exit status of a bad input, as for argparse's usage errors.
EXIT_BAD_INPUT = 2
# Errors whose message names the field or file at fault and the fix: a traceback adds nothing.
USER_ERRORS = (errors.UserError, DatasetFileError)


class _OwnInfoOnly(std_logging.Filter):
    """Keeps our INFO lines and everyone's warnings; Orbax and TFDS chat at INFO every save."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "matchme_jax" in record.pathname


def _debug_asked(argv: list[str]) -> bool:
    """Whether -v / --verbosity asks for absl's debug level (1 or more): a bad input then keeps
    its traceback. Read from argv, as a bad flag stops absl before FLAGS holds the level."""
    level = ""
    for i, arg in enumerate(argv[1:], start=1):
        if match := re.fullmatch(r"--?(?:v|verbosity)(?:=(.*))?", arg):
            level = match[1] if match[1] is not None else "".join(argv[i + 1 : i + 2])
    return level.isdigit() and int(level) >= 1


@contextlib.contextmanager
def _one_line_errors(argv: list[str]):
    """Ends the process on a user's error (`USER_ERRORS`): `run.py: <message>` on stderr and
    exit status EXIT_BAD_INPUT, without the traceback unless -v asks for it."""
    try:
        yield
    except USER_ERRORS as e:
        if _debug_asked(argv):
            raise
        print(f"run.py: {e}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def _config_flags(argv: list[str]) -> tuple[str | None, list[str]]:
    """--config's value and the fields the --config.<field> flags set, found as config_flags
    finds them (--config=<spec> or --config <spec>; --[no]config.<field>[=<value>])."""
    spec, fields = None, []
    for i, arg in enumerate(argv[1:], start=1):
        if re.fullmatch(r"--?config(=.*)?", arg):
            spec = arg.partition("=")[2] if "=" in arg else next(iter(argv[i + 1 : i + 2]), None)
        elif match := re.match(r"--?(?:no)?config\.([^=]+)", arg):
            fields.append(match[1])
    return spec, fields


def _check_config_flags(argv: list[str]) -> None:
    """Raises a UserError for a --config file that does not exist, or that lacks a field a
    --config.<field> flag sets: config_flags reports either with a page of traceback."""
    spec, fields = _config_flags(flags.FLAGS.read_flags_from_files(argv, force_gnu=False))
    if spec is None:
        return  # absl reports the missing flag
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise errors.MissingFileError(
            f"--config={spec}: there is no config file {path!r}; give one of configs/*.py "
            "(e.g. --config=configs/synthetic.py)."
        )
    try:
        config = defaults.load_config_file(path, arg or None)  # config_flags loads it again
    except ValueError as e:  # what get_config says of its argument
        raise errors.UserError(f"--config={spec}: {errors.gist(e)}") from e
    for field in fields:
        if problem := config_checks.unknown_field(config, field):
            raise errors.UserError(problem)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing (`app.run`'s flags_parser) after `_check_config_flags`; a bad flag
    (an unknown one, a value of the wrong type) ends with one line too."""
    with _one_line_errors(argv):
        try:
            _check_config_flags(argv)
            return flags.FLAGS(argv)
        except flags.Error as e:
            raise errors.UserError(str(e)) from e


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(max(logging.get_verbosity(), logging.INFO))  # -v 1 keeps debug lines
    logging.get_absl_handler().addFilter(_OwnInfoOnly())
    with _one_line_errors(sys.argv):
        config_checks.check_workdir_path(_WORKDIR.value)
        experiment.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    # Flags only when run as a program, so that tests import this file's functions.
    from ml_collections import config_flags

    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
    )
    _WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and results.")
    flags.mark_flags_as_required(["config", "workdir"])
    app.run(main, flags_parser=_parse_flags)
