"""Errors a user can cause and fix."""


class VivaUserError(Exception):
    """An error the user can fix; the CLI prints its message on one line and exits with code 2."""
