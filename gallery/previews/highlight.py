"""Code cells as Pygments HTML, with a faster Python lexer that gives the same tokens.

Pygments' Python lexer tries every rule of a state in turn at each position, so a plain name,
space or bracket is matched only after some forty failed patterns (string prefixes, numbers,
keyword and builtin lists). `FastPythonLexer` puts rules for those in front that match exactly
where none of the rules before them would: a name is taken only when no keyword, builtin or
magic-name rule matches there and no quote follows it (a string prefix); spaces only when no
docstring or soft keyword rule takes them with the line's indentation; numbers and strings
without a prefix where nothing before them could match. Its tokens equal
PythonLexer's (tests/test_preview_highlight.py compares them over the standard library); it
lexes notebook code about twice as fast, which is most of a preview's render time.
"""
from __future__ import annotations

import functools
from typing import Any


@functools.cache
def fast_python_lexer_class() -> type:
    from pygments import unistring
    from pygments.lexer import inherit, words
    from pygments.lexers.python import PythonLexer
    from pygments.token import Name, Operator, Punctuation, Text, Whitespace

    def pattern(rule: Any) -> str:
        return rule[0].get() if isinstance(rule[0], words) else rule[0]

    def names_unless(states: tuple[str, ...], *more: str) -> tuple[str, Any]:
        taken = [*more, *(pattern(r) for s in states for r in PythonLexer.tokens[s]
                          if isinstance(r, tuple))]
        return ("(?!" + "|".join(f"(?:{p})" for p in taken) + ")"
                f"(?:{PythonLexer.uni_name})(?![{unistring.xid_continue}'\"])", Name)

    words_in_expr = ("expr-keywords", "builtins", "magicfuncs", "magicvars")
    # Spaces in the root state, unless a docstring or soft keyword at the start of a line
    # takes them (those rules begin with the line's indentation).
    line_starts = [pattern(r) for r in PythonLexer.tokens["root"]
                   if isinstance(r, tuple) and pattern(r).startswith("^(\\s*)")]
    line_starts += [pattern(r) for r in PythonLexer.tokens["soft-keywords"]]
    spaces = ("".join(f"(?!{p})" for p in line_starts) + r"[^\S\n]+", Text)
    operator_words = r"(in|is|and|or|not)\b"
    # `.` before a digit starts a number, `:=` is an operator, not a colon.
    operators = (r"!=|==|<<|>>|:=|[-~+/*%=<>&^|]|\.(?!\d)", Operator)
    punctuation = (r"(?!:=)[]{}:(),;[]", Punctuation)

    # No rule before these can match where a number or an unprefixed string starts.
    numbers = list(PythonLexer.tokens["numbers"])
    strings = [r for r in PythonLexer.tokens["expr"]
               if isinstance(r, tuple) and pattern(r).startswith("([uU]?)")]

    class FastPythonLexer(PythonLexer):  # type: ignore[misc,valid-type]
        """PythonLexer's tokens, found sooner (see the module's docstring)."""

        name = "Python (gallery)"
        aliases: list[str] = []
        tokens = {
            "root": [(r"\n", Whitespace), spaces, punctuation, operators, *numbers,
                     names_unless(("keywords", "soft-keywords", *words_in_expr), operator_words,
                                  r"(?:def|class|lazy|from|import)\b"),
                     inherit],
            "expr": [(r"[^\S\n]+", Text), punctuation, operators, *strings, *numbers,
                     names_unless(words_in_expr, operator_words), inherit],
        }

    return FastPythonLexer


_highlighters: dict[str, tuple[Any, Any]] = {}


def highlight(source: str, language: str) -> str:
    """Code as Pygments HTML: token text escaped by Pygments, class names from a fixed set.

    Its output needs no sanitiser pass (the language name is checked in `strict_outputs`).
    """
    import pygments
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name
    from pygments.util import ClassNotFound

    if language not in _highlighters:
        if language in ("python", "python3", "py", "py3") or language.startswith("ipython"):
            lexer = fast_python_lexer_class()()
        else:
            try:
                lexer = get_lexer_by_name(language)
            except ClassNotFound:
                lexer = get_lexer_by_name("text")
        if len(_highlighters) > 200:
            _highlighters.clear()
        _highlighters[language] = (lexer, HtmlFormatter(cssclass=f"highlight hl-{language}"))
    lexer, formatter = _highlighters[language]
    return pygments.highlight(source, lexer, formatter)
