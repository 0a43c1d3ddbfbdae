"""User-facing errors.

Every problem a user can cause (a bad file, a wrong config key, a checkpoint for another model) is raised as a
:class:`RgbxError` whose message names the file / key / shape and what was expected. The CLI prints these as one
clear message without a traceback; anything else is a bug in rgbx and keeps its traceback.
"""

from __future__ import annotations


class RgbxError(Exception):
    """An error caused by user input, with a message meant to be read by that user.

    Raised in a data-loader worker process, it reaches the main process re-created by PyTorch from a message that
    wraps the worker's whole traceback ("Caught DataError in DataLoader worker process 0. Original Traceback ...");
    the constructor recognises that form and keeps only the original message, so the user still reads one clear
    line (the worker's traceback is kept in ``worker_traceback``)."""

    def __init__(self, *args):
        self.worker_traceback = None
        if len(args) == 1 and isinstance(args[0], str):
            message = args[0]
            marker = f"{type(self).__name__}: "
            if message.startswith("Caught ") and "Original Traceback" in message and marker in message:
                self.worker_traceback = message
                args = (message.rsplit(marker, 1)[1].rstrip("\n"),)
        super().__init__(*args)


class ConfigError(RgbxError):
    """A configuration key or value is wrong."""


class DataError(RgbxError):
    """A dataset on disk does not match what its description promises.

    ``problems`` lists every problem found (validation collects them all instead of stopping at the first);
    ``advice``, what to do about them, is printed after the list and is not one of them.
    """

    def __init__(self, message: str, problems: list[str] | None = None, advice: str | None = None):
        self.problems = list(problems or [])
        self.advice = advice
        if self.problems:
            shown = self.problems[:50]
            more = len(self.problems) - len(shown)
            message = message + "\n" + "\n".join(f"  - {p}" for p in shown)
            if more:
                message += f"\n  ... and {more} more"
        if advice:
            message += f"\n{advice}"
        super().__init__(message)


class SplitNotFoundError(DataError):
    """A split of a dataset is not on disk (its split file or folder is missing), while the dataset itself is there:
    e.g. a benchmark's test split that was not downloaded. ``rgbx data check`` skips such a split of a benchmark."""


class CheckpointError(RgbxError):
    """A checkpoint cannot be read or does not fit the model it is loaded into."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler pre-empting a job, ``kill``) where a command turns it into an interruption, as Ctrl-C
    raises KeyboardInterrupt (``rgbx train``); the command line ends with exit status 143."""
