"""The template backend: the rule-based rewrite of ``phrasing`` behind the backend interface.

The default for the demo and CI: deterministic, no model, and every caption passes validation.
"""

from __future__ import annotations

from tasks.rephrase.base import Generated, Generation, RephraseBackend
from tasks.rephrase.phrasing import template_caption


class TemplateBackend(RephraseBackend):
    """No model: template_caption for every prompt."""

    name = "template"

    def _generate(self, jobs: list[Generation]) -> list[Generated]:
        return [Generated(template_caption(j.caption, j.descriptors, j.seed, j.scene)) for j in jobs]
