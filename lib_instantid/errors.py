"""Exceptions whose messages tell the user what is wrong and how to fix it."""
from __future__ import annotations


class InstantIDError(Exception):
    """A problem the user can fix. `field` names the setting that was wrong, when there is one.

    `status_code` and `detail` are what A1111's API error handler reads, from the instance's own attributes
    (`vars(e)`), so an error raised during an API job answers with a useful status and message.
    """

    default_status = 422

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field
        self.detail = message
        self.status_code = self.default_status


class NoFaceError(InstantIDError):
    """No usable face was found in an input image."""


class ModelError(InstantIDError):
    """A weights file is missing, unreadable, or not the kind that was expected."""


class SetupError(InstantIDError):
    """The installation is incomplete (face models, packages); fixed by the server's owner, not per request."""

    default_status = 500


class DownloadError(SetupError):
    """A model file could not be fetched or verified; the message names the file, the URL and what to do."""
