"""The one exception type that reaches the user as a one-line message and exit status 2."""

EXIT_USAGE = 2  # the exit status of every command (diffjscc, python -m bench) on a UserError


class UserError(Exception):
    """Bad input from the user (config, path, data, option): printed as one line, exit 2.

    Raise it with a message that names the offending key, file or value; the CLI
    prints ``diffjscc: error: <message>`` and exits with status 2, never a traceback.
    """
