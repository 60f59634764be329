"""One exception type for everything a user can get wrong, so the CLI can print it as one line."""


class AIMError(ValueError):
    """Bad input or configuration; the message says what is wrong and what to do."""
