"""Text from places the grader does not control, made safe to store and to show.

A learner's exception message, a submission's folder name or a hand-edited state file may hold
control characters: terminal escape sequences, or bytes that XML 1.0 cannot hold at all (one of
them makes a whole junit.xml unreadable). :func:`escape_controls` writes each of them as a visible
escape, so the text keeps its meaning and every report stays well-formed.
"""

from __future__ import annotations

import re

# Everything but tab, newline, carriage return and the printable ranges XML 1.0 allows (C0 and
# C1 controls, DEL, lone surrogates, U+FFFE and U+FFFF are out).
_CONTROL = re.compile("[^\t\n\r\x20-\x7e\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as ``\\xNN`` or ``\\uNNNN``."""
    return _CONTROL.sub(lambda m: ascii(m.group())[1:-1], text)
