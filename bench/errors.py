"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: an unknown name, a value out of range, a malformed grid.
    ``key`` names the setting at fault, so a grid error can point at the line that sets it;
    ``path`` is its full dotted location when known (``("method", "gmp", "end_fraction")``)."""

    def __init__(self, message: str, key: str | None = None,
                 path: tuple[str, ...] | None = None):
        super().__init__(message)
        self.key = key
        self.path = path


class DataNotFound(UserError):
    """A dataset's files are not where the loader looks (the message says where it looked and
    how to get them). Preflight times on synthetic data of the same shape instead; files that
    are present but unreadable stay a ``UserError``."""
