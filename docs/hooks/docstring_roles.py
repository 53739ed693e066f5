"""MkDocs hook: the Sphinx cross-reference roles genrec's docstrings use, rendered as plain code in the API pages.

Docstrings say ``:class:`~genrec.serve.artifact.Artifact``` (readable in the source and in ``help()``); the
API reference renders Markdown, where the role would show as literal text. Here ``:role:`x``` becomes ``x`` in
code, and ``:role:`~a.b.C``` becomes ``C``, as Sphinx shows them.
"""

from __future__ import annotations

import re
from typing import Any

_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc|obj):<code>(~?)([\w.]+)</code>")


def strip_roles(html: str) -> str:
    """``:class:<code>~a.B</code>`` -> ``<code>B</code>``; without ``~`` the whole dotted name stays."""
    return _ROLE.sub(lambda m: f"<code>{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}</code>", html)


def on_page_content(html: str, **kwargs: Any) -> str:
    return strip_roles(html)
