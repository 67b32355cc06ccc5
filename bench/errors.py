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
