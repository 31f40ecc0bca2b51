"""The one caption of modes 2-5 and how it is filled in (`data.view_caption` chooses the template)."""

from __future__ import annotations

# The original's. The template can change for base models that never read such English (the mini world's
# byte-level captions; measured there without a gain: docs/mini_world.md). A view mapper works with the caption
# it was pretrained with.
VIEW_CAPTION = "{view}. A photo of a {object}"


def view_caption(view_token: str, object_token: str, template: str = VIEW_CAPTION) -> str:
    return template.format(view=view_token, object=object_token)
