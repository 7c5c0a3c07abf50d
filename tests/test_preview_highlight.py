"""The faster Python lexer of previews (gallery/previews/highlight.py) gives exactly the
tokens of Pygments' own PythonLexer."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from pygments.lexers.python import PythonLexer

from gallery.previews.highlight import fast_python_lexer_class, highlight

TRICKY = '''#!/usr/bin/env python
"""Module docstring."""
import numpy as np
from . import x as y
lazy import json
@decorator.attr
class C(Base, metaclass=M):
    r"""Raw docstring."""
    def __init__(self, a: int = 0x1F, *args, **kw) -> None:
        """Doc."""
        self.a = a if a is not None else .5e-3 + 1_000j
        print(f"{a!r:>{width}} {{braces}}", rb'\\x00', u"u", fr"{a}\\d", t"{x}")
        match command.split():
            case [action, obj]:
                pass
            case _:
                type X = int
        match = case = type = 1
        x = [i for i in range(3) if not i in (1, 2)] ; y @= z ; w := 3
        return __name__, self.__dict__, len(...), np.dot(a, b), a.print, ur"x"
    async def g(self): await self.h(); yield from ()
print ("x")  # comment with 'quotes' and """ triple
café = naïve + ε
'''


# Characters each at the edge of a rule's class: form feed and other separators, non-ASCII
# names and spaces, unterminated strings, numbers cut short, string prefixes like names.
EDGES = ["x = 1\n\x0c\x1c y\x1f", "é = 1; ünïcode + ß", "a\u00a0b", "", "\n\n", "'open",
         '"""', "0x", "1._2", ".5 + x.y", "u'x' U\"y\" uu'z' f'{u}'", "a:=b[1:2]", "\\\n\\",
         "λ(x)", "x\r\ny"]


def tokens(lexer, text: str) -> list:
    return list(lexer.get_tokens(text))


def test_it_lexes_python_exactly_as_pygments_does():
    fast, stock = fast_python_lexer_class()(), PythonLexer()
    assert tokens(fast, TRICKY) == tokens(stock, TRICKY)
    for text in EDGES:
        assert tokens(fast, text) == tokens(stock, text), text
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sample = sorted(stdlib.glob("*.py"))[::12]
    assert len(sample) > 10
    for path in sample:
        text = path.read_text(encoding="utf-8", errors="replace")
        assert tokens(fast, text) == tokens(stock, text), path.name


def test_it_writes_the_html_pygments_writes():
    import pygments
    from pygments.formatters import HtmlFormatter

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [TRICKY, *EDGES, "x = 1", "a < b & c > d  # <&>", "\n\n\nx\n\n", 's = """\n\n"""\n',
             "x = 1\r\ny = 2\r", "\ufeffx", "no newline at the end",
             *(p.read_text(encoding="utf-8", errors="replace")
               for p in sorted(stdlib.glob("*.py"))[5::25])]
    formatter = HtmlFormatter(cssclass="highlight hl-python")
    for text in texts:
        assert highlight(text, "python") == pygments.highlight(text, PythonLexer(), formatter)


def test_it_highlights_python_and_ipython_code_with_it():
    html = highlight("def f(x):\n    return x + 1  # one\n", "ipython3")
    assert '<span class="k">def</span>' in html and '<span class="c1"># one</span>' in html
    assert 'class="highlight hl-ipython3"' in html
