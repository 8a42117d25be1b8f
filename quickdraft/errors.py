"""The one exception type users see.

Everything that is the user's fault (a bad model path, an unknown method, an
empty prompt, ...) raises :class:`QuickdraftError` with a one-line message
naming the problem. The CLI prints the message and exits non-zero; the server
turns it into an HTTP 4xx. Anything else is a bug and keeps its traceback.
"""


class QuickdraftError(Exception):
    """A user-facing error with a one-line message."""
