"""User-facing errors: one line saying what is wrong, which file or flag, and what to do."""


class UserError(Exception):
    """A problem the user can fix; cli.main prints it as one line and exits with `exit_code`."""

    exit_code = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class DataError(UserError):
    """The training images cannot be used."""


class ModelError(UserError):
    """The model cannot be found or loaded."""


class ResumeError(UserError):
    """A checkpoint does not fit the run that wants to resume from it."""


class TrainingStopped(UserError):
    """Training stopped early (signal, non-finite loss); outputs already saved are named in the message."""

    exit_code = 1


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM where no checkpoint can be saved (before the loop, a second Ctrl-C);
    cli.main prints the message and exits 128 + the signal number."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.exit_code = exit_code
