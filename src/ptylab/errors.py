"""The package's one error base class: every error a user can cause derives from it.

Entry points catch ``PtylabError`` and print one ``error: ...`` line (exit 2) instead of a
traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PtylabError(Exception):
    """A problem with the user's input (config, files, artefacts), stated so they can fix it."""


class ConfigError(PtylabError, ValueError):
    """A config value is out of its range, missing, or meaningless for the chosen kind."""
