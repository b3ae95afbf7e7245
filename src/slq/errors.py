"""The one exception type users see.

Every mistake a user can make (bad path, malformed record, adapter for another backbone, a setting
out of range) raises `SLQError` with a single-line message that names the file and record, or the
setting, at fault. The library names settings as the Python API spells them (`batch_size`); the CLI
shows them as its flags (`--batch-size`). The CLI prints the message and exits with `EXIT_USAGE`;
anything else escaping is a bug and keeps its traceback.
"""

from __future__ import annotations

EXIT_USAGE = 2

# Characters that str.splitlines() breaks on; escaped so every error message stays one line.
_LINE_BREAKS = {c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85)}
_LINE_BREAKS.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


def one_line(text: str) -> str:
    """`text` with every line break escaped, so a message stays one line."""
    return text.translate(_LINE_BREAKS)


class SLQError(Exception):
    """A user-facing error: the message says what is wrong and where."""

    def message(self, name_of=lambda setting: setting) -> str:
        """The message, with settings named by `name_of` (the CLI passes its flag names)."""
        return str(self)


class DataError(SLQError):
    """A dataset file, record or image cannot be used."""


class AdapterError(SLQError):
    """An adapter folder is malformed or does not belong to the backbone it is loaded onto."""


class _NoValue:
    """The value of a SettingError that names a setting without showing a value; one object, also
    after pickling."""

    def __reduce__(self):
        return "NO_VALUE"

    def __repr__(self):
        return "NO_VALUE"


NO_VALUE = _NoValue()


class SettingError(SLQError):
    """A setting (a config field or keyword argument) has a value that cannot be used.

    `setting` is its Python name; `message(flag_of)` renders it under another name, as the CLI does
    with its flags.
    """

    def __init__(self, setting: str, value: object = NO_VALUE, rule: str = ""):
        self.setting, self.value, self.rule = setting, value, rule
        super().__init__(self.message())

    def __reduce__(self):  # rebuilt from its parts when it crosses a process boundary (compare --isolate)
        return type(self), (self.setting, self.value, self.rule)

    def message(self, name_of=lambda setting: setting) -> str:
        if self.value is NO_VALUE:  # a switch, or a setting whose value says nothing: "resume: ..."
            return one_line(f"{name_of(self.setting)}: {self.rule}")
        plain = isinstance(self.value, str) and self.value and not any(c.isspace() for c in self.value)
        shown = self.value if plain else repr(self.value)
        return one_line(f"{name_of(self.setting)} {shown if len(shown) <= 80 else shown[:77] + '...'}: {self.rule}")
