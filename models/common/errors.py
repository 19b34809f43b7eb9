"""The one exception type for user mistakes: scripts print its message on one line, no traceback."""


class UserError(ValueError):
    """A bad value from the user (file, flag, model). The message names it and what would be right."""
