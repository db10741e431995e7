"""Prompt tools: box, point and pan/select, with the live mask preview."""

from __future__ import annotations

from app.tools.prompt import TOOLS, Prompt, PromptController

__all__ = ["TOOLS", "Prompt", "PromptController"]
