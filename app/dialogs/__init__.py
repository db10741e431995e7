"""Every question the app asks the user, in one place (tests swap in a scripted answerer)."""

from __future__ import annotations

from app.dialogs.prompter import Prompter

__all__ = ["Prompter"]
