"""The one exception type the CLI turns into a single clear line and a non-zero exit."""


class UserError(Exception):
    """Bad input from the user: an unknown name, a value out of range, a malformed grid."""
