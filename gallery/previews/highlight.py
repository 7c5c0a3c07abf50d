"""Code cells as Pygments HTML, with a faster Python lexer that gives the same tokens.

Pygments' Python lexer tries every rule of a state in turn at each position, so a plain name,
space or bracket is matched only after some forty failed patterns (string prefixes, numbers,
keyword and builtin lists). `FastPythonLexer` puts rules for those in front that match exactly
where none of the rules before them would: a name is taken only when no keyword, builtin or
magic-name rule matches there and no quote follows it (a string prefix); spaces only when no
docstring or soft keyword rule takes them with the line's indentation; numbers and strings
without a prefix where nothing before them could match. Each of these rules starts with
characters of its own, so at each position only the one for the character there is tried
before the stock rules (a position of another character skips them all). Its tokens equal
PythonLexer's (tests/test_preview_highlight.py compares them over the standard library); it
lexes notebook code two to three times as fast, which is much of a preview's render time.
"""
from __future__ import annotations

import functools
import re
from typing import Any


@functools.cache
def fast_python_lexer_class() -> type:
    from pygments import unistring
    from pygments.lexer import _TokenType, inherit, words
    from pygments.lexers.python import PythonLexer
    from pygments.token import Error, Name, Operator, Punctuation, Text, Whitespace

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

    names_root = names_unless(("keywords", "soft-keywords", *words_in_expr), operator_words,
                              r"(?:def|class|lazy|from|import)\b")
    names_expr = names_unless(words_in_expr, operator_words)
    # The rules put in front, each with the class of characters it can start with: a position
    # is tried only with those whose class holds its character (then with the stock rules).
    digits = r"[0-9.]"
    fast = {
        "root": [((r"\n", Whitespace), r"\n"), (spaces, r"[^\S\n]"),
                 (punctuation, r"[]{}:(),;[]"), (operators, r"[-!=<>:~+/*%&^|.]"),
                 *((n, digits) for n in numbers), (names_root, r"[^\W\d]")],
        "expr": [((r"[^\S\n]+", Text), r"[^\S\n]"), (punctuation, r"[]{}:(),;[]"),
                 (operators, r"[-!=<>:~+/*%&^|.]"), *((s, r"[uU\"']") for s in strings),
                 *((n, digits) for n in numbers), (names_expr, r"[^\W\d]")],
    }

    class FastPythonLexer(PythonLexer):  # type: ignore[misc,valid-type]
        """PythonLexer's tokens, found sooner (see the module's docstring)."""

        name = "Python (gallery)"
        aliases: list[str] = []
        tokens = {state: [rule for rule, _ in rules] + [inherit] for state, rules in fast.items()}

        def get_tokens_unprocessed(self, text: str, stack: tuple[str, ...] = ("root",)) -> Any:
            # RegexLexer's loop, except that the rules of a state are those for the
            # character at the position (`_by_char`).
            tokendefs = self._tokens
            by_char = _by_char(type(self))
            pos = 0
            statestack = list(stack)
            statetokens = tokendefs[statestack[-1]]
            chars = by_char.get(statestack[-1], {})
            end = len(text)
            while 1:
                for rexmatch, action, new_state in chars.get(
                        text[pos] if pos < end else "", statetokens):
                    m = rexmatch(text, pos)
                    if m:
                        if action is not None:
                            if type(action) is _TokenType:
                                yield pos, action, m.group()
                            else:
                                yield from action(self, m)
                        pos = m.end()
                        if new_state is not None:
                            if isinstance(new_state, tuple):
                                for state in new_state:
                                    if state == "#pop":
                                        if len(statestack) > 1:
                                            statestack.pop()
                                    elif state == "#push":
                                        statestack.append(statestack[-1])
                                    else:
                                        statestack.append(state)
                            elif isinstance(new_state, int):
                                if abs(new_state) >= len(statestack):
                                    del statestack[1:]
                                else:
                                    del statestack[new_state:]
                            elif new_state == "#push":
                                statestack.append(statestack[-1])
                            statetokens = tokendefs[statestack[-1]]
                            chars = by_char.get(statestack[-1], {})
                        break
                else:
                    if pos >= end:
                        break
                    if text[pos] == "\n":
                        statestack = ["root"]
                        statetokens = tokendefs["root"]
                        chars = by_char["root"]
                        yield pos, Whitespace, "\n"
                    else:
                        yield pos, Error, text[pos]
                    pos += 1

    @functools.cache
    def _by_char(cls: type) -> dict[str, dict[str, list[Any]]]:
        """For each ASCII character, the rules of a state that can match where it stands."""
        tables = {}
        for state, rules in fast.items():
            compiled = cls._tokens[state]
            front, rest = compiled[:len(rules)], compiled[len(rules):]
            tables[state] = {
                c: [r for r, (_, first) in zip(front, rules, strict=True)
                    if re.match(first, c)] + rest
                for c in map(chr, range(128))}
        return tables

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
    if isinstance(lexer, fast_python_lexer_class()):
        return html_of_tokens(lexer.get_tokens_unprocessed(lexer._preprocess_lexer_input(
            source)), formatter)
    return pygments.highlight(source, lexer, formatter)


def html_of_tokens(tokens: Any, formatter: Any) -> str:
    """What `formatter` (an HtmlFormatter with its default options but `cssclass`) makes of
    a lexer's tokens, written in one loop rather than through its chain of generators (a
    fifth of the time): adjacent tokens of one class share a span, every line closes its
    span, token text is escaped as Pygments escapes it."""
    openers = _OPENERS  # the same for every formatter here: no class prefix, no styles
    out = [f'<div class="{formatter.cssclass}"><pre><span></span>']
    add = out.append
    open_span = ""  # the span the current line has open
    pending = False  # text on the current line
    for _, ttype, value in tokens:
        span = openers.get(ttype)
        if span is None:
            css = formatter._get_css_classes(ttype)
            span = openers[ttype] = f'<span class="{css}">' if css else ""
        value = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        if "\n" in value:
            *lines, value = value.split("\n")
            for part in lines:
                if part:
                    if open_span != span:
                        if open_span:
                            add("</span>")
                        add(span)
                    add(part)
                    if span:
                        add("</span>")
                elif open_span:
                    add("</span>")
                add("\n")
                open_span, pending = "", False
        if value:
            if open_span != span:
                if open_span:
                    add("</span>")
                add(span)
                open_span = span
            add(value)
            pending = True
    if pending:
        add(("</span>" if open_span else "") + "\n")
    add("</pre></div>\n")
    return "".join(out)


_OPENERS: dict[Any, str] = {}
