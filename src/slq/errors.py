"""The one exception type users see.

Every mistake a user can make (bad path, malformed record, adapter for another backbone) raises
`SLQError` with a single-line message that names the file and record at fault. The CLI prints the
message and exits with `EXIT_USAGE`; anything else escaping is a bug and keeps its traceback.
"""

EXIT_USAGE = 2


class SLQError(Exception):
    """A user-facing error: the message says what is wrong and where."""


class DataError(SLQError):
    """A dataset file, record or image cannot be used."""


class AdapterError(SLQError):
    """An adapter folder is malformed or does not belong to the backbone it is loaded onto."""
