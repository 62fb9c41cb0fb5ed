"""Which of the designer's three jobs a request is, from its words and whether it has a picture.

The skill decides this twice, and the same way both times: in ``turn_options``, before the
variant is chosen (so the request runs on the model that can do it), and in ``to_actions``, to
know which action the reply is. A rule on the words, not a model, so a user can predict it:

1. **suggest**: the words ask for an improvement ("How could this image be improved?", "any
   suggestions?", "make it better") → the designer variant as an edit: the reply is the
   suggestion and the picture with it applied, drawn conditioned on the picture.
2. **design**: no picture given and the words ask for a new one ("Design a poster with a red
   circle.", "Create …", "Draw …", "Make a poster …": a creating verb, or "make" followed by
   "a"/"an") → the designer variant, drawing from the words alone.
3. **edit**: everything else ("Make the circle blue.", "Remove the square.", "Draw a hat on
   this"): an edit of the given picture, or of the session's working image when none is given.
"""

from __future__ import annotations

import re
from typing import Literal

Kind = Literal["design", "suggest", "edit"]

IMPROVE = re.compile(r"\b(improv\w*|better|suggest\w*|critiqu\w*|feedback|polish\w*)\b", re.I)
CREATE = re.compile(r"\b(design|create|generate|draw|sketch|compose|paint|illustrate)\b"
                    r"|\bmake\s+(?:me\s+)?an?\b", re.I)


def kind_of(text: str, has_picture: bool) -> Kind:
    """The request's kind by the rule above; ``has_picture``: the user gave one this turn."""
    if IMPROVE.search(text):
        return "suggest"
    if not has_picture and CREATE.search(text):
        return "design"
    return "edit"
