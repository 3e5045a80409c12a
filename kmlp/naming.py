"""How messages name options and show their values: as the command line spells them, or as the
configuration file that set them does (:class:`Naming`, for every rule in :mod:`kmlp.config`)."""

from __future__ import annotations

import json
import math
import numbers
import reprlib

from kmlp.errors import ConfigError


def is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class Naming:
    """How a message names options and shows their values: as the command line spells them
    (``--n-hidden``, ``True``; :data:`FLAGS`), or as the configuration file ``file`` does
    (``FILE: n_hidden ...``, ``true``) for the options it set, ``keys`` (None: all of them).

    Every check takes one, so that a value read from a file is reported in the file's terms.
    """

    def __init__(self, file=None, keys=None):
        self.file = None if file is None else str(file)
        self.keys = None if keys is None else frozenset(keys)

    def from_file(self, flag: str) -> bool:
        return self.file is not None and (self.keys is None or option_key(flag) in self.keys)

    def option(self, flag: str) -> str:
        """``--n-hidden`` as the source of its value spells it."""
        return option_key(flag) if self.from_file(flag) else flag

    def value(self, value, flag: str) -> str:
        return shown(value, as_json=self.from_file(flag))

    def error(self, message: str, *flags: str) -> ConfigError:
        """The error saying ``message`` about ``flags``, prefixed by the file if it set one of them."""
        return ConfigError(f"{self.file}: {message}" if any(map(self.from_file, flags)) else message)

    def bad(self, flag: str, rule: str, value) -> ConfigError:
        """``--flag RULE, got VALUE`` in this naming."""
        return self.error(f"{self.option(flag)} {rule}, got {self.value(value, flag)}", flag)


FLAGS = Naming()


_KEYS = {"--jit": "jit_compile", "--from": "start_from"}  # the flags not spelled as their key


def option_key(flag: str) -> str:
    """The configuration key a flag sets: ``--n-hidden`` sets ``n_hidden``."""
    return _KEYS.get(flag) or flag.removeprefix("--").replace("-", "_")


BRIEF = reprlib.Repr()  # a value in a message: a long string or a deep list is cut short
BRIEF.maxstring = BRIEF.maxother = BRIEF.maxlong = 60


def shown(value, as_json: bool = False) -> str:
    if is_int(value) and value.bit_length() > 192:  # (str() refuses past 4,300 digits)
        return f"an integer of {int(value.bit_length() * math.log10(2)) + 1} digits"
    if as_json and (value is None or isinstance(value, (bool, float))):
        return json.dumps(value)  # null, true, NaN: as the file wrote it
    return BRIEF.repr(value)
