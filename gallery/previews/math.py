"""Mathematics in previews: TeX turned into MathML when the preview is rendered, so a browser
shows it natively and no script is needed.

latex2mathml does the conversion. Its output is untrusted (it copies `\\href{javascript:…}`
into an attribute and `\\text{<…>}` into the markup as it is), so it goes through the same nh3
pass as all other HTML, with an allowlist of MathML elements and attributes (`MATHML_TAGS`,
`MATHML_ATTRIBUTES`): no links, no styles, no `maction`, no `annotation-xml`. TeX that is too
long, nested too deeply, over the render's budget or not understood stays readable TeX in a
code span.
"""
from __future__ import annotations

import functools
import html
import operator
import re
from collections.abc import Iterator
from typing import Any

MAX_TEX_CHARS = 4_000  # one formula; conversion time grows with its length
MAX_TEX_DEPTH = 40  # groups, \left…\right and environments inside each other
MAX_TEX_PER_RENDER = 200_000  # characters of TeX one render converts at most

# MathML Core's presentation elements, and `semantics`/`annotation` (text only) that
# converters wrap around them. Not `maction` (interaction), `annotation-xml` (may hold HTML)
# or `mglyph` (an image).
MATHML_TAGS = {
    "math", "mrow", "mi", "mn", "mo", "ms", "mtext", "mspace", "msub", "msup", "msubsup",
    "mfrac", "msqrt", "mroot", "mstyle", "mtable", "mtr", "mtd", "munder", "mover",
    "munderover", "mpadded", "mphantom", "menclose", "merror", "mmultiscripts", "mprescripts",
    "none", "semantics", "annotation",
}
_COMMON = {"mathvariant", "displaystyle", "scriptlevel", "mathcolor", "mathbackground",
           "mathsize"}
_SPECIFIC = {
    "math": {"display"},
    "mo": {"stretchy", "fence", "separator", "lspace", "rspace", "form", "minsize", "maxsize",
           "largeop", "movablelimits", "symmetric", "accent"},
    "mover": {"accent"}, "munder": {"accentunder"}, "munderover": {"accent", "accentunder"},
    "mfrac": {"linethickness"},
    "mspace": {"width", "height", "depth"},
    "mpadded": {"width", "height", "depth", "lspace", "voffset"},
    "mtable": {"columnalign", "rowalign", "columnspacing", "rowspacing", "columnlines",
               "rowlines", "frame", "framespacing", "width"},
    "mtr": {"columnalign", "rowalign"},
    "mtd": {"columnalign", "rowalign", "columnspan", "rowspan"},
    "menclose": {"notation"},
}
MATHML_ATTRIBUTES = {tag: _COMMON | _SPECIFIC.get(tag, set()) for tag in MATHML_TAGS}
# Attribute values of MathML: words, numbers and lengths; never a URL, quote or parenthesis.
_SAFE_VALUE = re.compile(r"[A-Za-z0-9 .%#+-]{0,200}")


def mathml_value_ok(value: str) -> bool:
    """Whether a MathML attribute value is a plain word, number or length."""
    return _SAFE_VALUE.fullmatch(value) is not None


# How mathematics is found in markdown, as in nbconvert (and JupyterLab) with two changes.
# Inline `$…$` is not mathematics when it looks like money: the closing `$` is followed by a
# digit ("costs $5 and $10", as in Pandoc), or what it holds starts with a digit and ends
# with a space ("$20 in all; a $ sign"); and it holds no `$` or backtick, so it never reaches
# into a code span. `\(…\)` and `\[…\]` are mathematics with one backslash or two.
INLINE_MATH_TEX = (r"(?<![$\\])\$(?!\s*\$)(?!\d(?:[^$\\`]|\\.)*\s\$)"
                   r"(?P<math_inline_tex>(?:[^$\\`]|\\.)+?)\$(?!\d)")
INLINE_MATH_LATEX = r"(?<!\\)\\{1,2}\((?P<math_inline_latex>.*?)\\{1,2}\)"
BLOCK_MATH_LATEX = r"(?<!\\)\\{1,2}\[(?P<math_block_latex>.*?)\\{1,2}\]"
MULTILINE_MATH = (r"(?<!\\)[$]{2}.*?(?<!\\)[$]{2}|(?<!\\)\\{1,2}\[.*?\\{1,2}\]"
                  r"|\\begin\{(?P<math_env_name>[a-z]*\*?)\}.*?\\end\{(?P=math_env_name)\}")

_budget = [MAX_TEX_PER_RENDER]


def start_render() -> None:
    """A new render: the budget of TeX it may convert starts afresh."""
    _budget[0] = MAX_TEX_PER_RENDER


def tex_html(tex: str, *, display: bool, shown: str) -> str:
    """TeX as MathML, or `shown` (the TeX with its delimiters) in a code span when it cannot,
    or may not, be converted."""
    if tex.strip() and len(tex) <= min(MAX_TEX_CHARS, _budget[0]) and _depth(tex) <= MAX_TEX_DEPTH:
        _budget[0] -= len(tex)
        mathml = _convert(tex, display)
        if mathml:
            return mathml
    return f'<code class="gallery-tex">{html.escape(shown)}</code>'


_NESTING = re.compile(r"\\(?:left|right|begin|end)\b|(?<!\\)[{}]")


def _depth(tex: str) -> int:
    depth = deepest = 0
    for match in _NESTING.finditer(tex):
        token = match.group()
        if token in ("{", "\\left", "\\begin"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


# Environments latex2mathml does not know, as ones it does: numbered ones are shown
# unnumbered, as JupyterLab shows them.
_ENVIRONMENTS = {
    **dict.fromkeys(["equation", "equation*", "displaymath", "math", "subequations"], ""),
    **dict.fromkeys(["align", "eqnarray", "eqnarray*", "flalign", "flalign*", "alignat",
                     "alignat*", "aligned", "alignedat"], "align*"),
    **dict.fromkeys(["gather", "gather*", "gathered", "multline", "multline*"], "array}{c"),
}
_ENV = re.compile(r"\\(begin|end)\s*\{([a-zA-Z]+\*?)\}(\{\d+\})?")
_REPEATED_COLUMNS = re.compile(r"\*\{(\d{1,3})\}(?:\{([lcr|]+)\}|([lcr|]))")
_DROPPED = re.compile(r"\\label\s*\{[^{}]*\}|\\nonumber\b|\\notag\b")
_UNICODE = re.compile(r"\\unicode\b(?!\s*\{\s*x?[0-9A-Fa-f]{1,6}\s*\})")


def _prepare(tex: str) -> str | None:
    """TeX as latex2mathml reads it best, or None for TeX it would copy into the markup."""
    if _UNICODE.search(tex):  # \unicode{…} is copied into an entity unchecked
        return None

    def environment(m: re.Match[str]) -> str:
        name = _ENVIRONMENTS.get(m.group(2))
        if name is None:
            return m.group(0)
        if not name:
            return ""
        if m.group(1) == "end":
            return "\\end{array}" if name.startswith("array") else f"\\end{{{name}}}"
        return f"\\begin{{{name}}}"

    tex = _ENV.sub(environment, _DROPPED.sub("", tex))
    return _REPEATED_COLUMNS.sub(lambda m: (m.group(2) or m.group(3)) * int(m.group(1)), tex)


def tokenize(latex: str, skip_comments: bool = True) -> Iterator[str]:
    """latex2mathml's tokenizer, giving the same tokens a third faster: a third of its time
    went to a lambda that drops the pattern's unmatched groups, and most tokens are a single
    letter or character that needs none of the checks after it."""
    from latex2mathml import commands, tokenizer

    for match in tokenizer.PATTERN.finditer(latex):
        tokens = tuple(filter(_not_none, match.groups()))
        first = tokens[0]
        if len(tokens) == 1 and first[0] not in "\\%" and not first[0].isdigit():
            yield first
            continue
        if first.startswith(commands.VERB):
            yield commands.VERB
            yield tokens[2]  # verb_content
            continue
        if first.startswith(commands.MATH) and first not in commands.MATH_NON_FONT_COMMANDS:
            symbol = tokenizer.convert_symbol("".join(tokens))
            if symbol:
                yield f"&#x{symbol};"
                continue
        for captured in tokens:
            if skip_comments and captured.startswith("%"):
                break
            if captured.endswith(tokenizer.UNITS) and captured[0:1].isdigit():
                yield captured.replace(" ", "")
                continue
            if captured.startswith((commands.BEGIN, commands.END, commands.OPERATORNAME)):
                yield "".join(captured.split(" "))
                continue
            yield captured


_not_none = functools.partial(operator.is_not, None)


@functools.lru_cache(maxsize=4096)
def _convert(tex: str, display: bool) -> str:
    """MathML for TeX, or "" when latex2mathml cannot read it (cached: formulas repeat)."""
    prepared = _prepare(tex)
    if prepared is None:
        return ""
    return _number_array(prepared, display) or _latex2mathml(prepared, display)


# A matrix of numbers in parentheses, as array outputs print themselves (QuTiP's objects,
# for one): a cell holds digits, signs, parentheses, `e` and `j`, `\times10^{…}` and dots.
_ARRAY = re.compile(r"\s*\\left\(\s*\\begin\{array\}\{([lcr]{1,100})\}(.*)"
                    r"\\end\{array\}\s*\\right\)\s*", re.DOTALL)
_CELL = re.compile(r"(?:[ 0-9.+\-()ej]|\\times ?10\^\{-?[0-9]{1,3}\}|\\[cvd]dots)*")
_ALIGN = {"l": "left", "c": "center", "r": "right"}


def _number_array(tex: str, display: bool) -> str:
    """latex2mathml's MathML for a matrix of numbers (`_ARRAY`), or "" for any other TeX.

    Made cell by cell (`_number_cell`), a tenth of the time of converting the whole:
    tests/test_preview_math.py checks that it is the same MathML.
    """
    m = _ARRAY.fullmatch(tex)
    if m is None:
        return ""
    aligns = [_ALIGN[a] for a in m.group(1)]
    rows = m.group(2).split("\\\\")
    if len(rows) > 1 and not rows[-1].strip(" "):
        rows.pop()  # after the last row's `\\`
    out = ['<math display="', "block" if display else "inline", '"><mrow><mrow>',
           '<mo stretchy="true" fence="true" form="prefix">&#x00028;</mo><mtable>']
    for row in rows:
        cells = row.split("&")
        if len(cells) > len(aligns):  # fewer is common: QuTiP asks for a column more
            return ""
        out.append("<mtr>")
        for cell, align in zip(cells, aligns[:len(cells)], strict=True):
            if not cell.strip(" ") or _CELL.fullmatch(cell) is None:
                return ""  # latex2mathml drops some empty cells and rows: leave those to it
            inner = _number_cell(cell)
            if inner is None:
                return ""
            out += ['<mtd columnalign="', align, '">', inner, "</mtd>"]
        out.append("</mtr>")
    out.append('</mtable><mo stretchy="true" fence="true" form="postfix">&#x00029;</mo>'
               "</mrow></mrow></math>")
    return "".join(out)


# What latex2mathml makes of each token of a cell (`_CELL`).
_CELL_TOKENS = {
    "+": "<mo>&#x0002B;</mo>", "-": "<mo>&#x02212;</mo>", ".": "<mo>&#x0002E;</mo>",
    "(": '<mo stretchy="false">&#x00028;</mo>', ")": '<mo stretchy="false">&#x00029;</mo>',
    "e": "<mi>e</mi>", "j": "<mi>j</mi>", "\\times": "<mo>&#x000D7;</mo>",
    "\\cdots": "<mo>&#x022EF;</mo>", "\\vdots": "<mo>&#x022EE;</mo>",
    "\\ddots": "<mo>&#x022F1;</mo>",
}
_DIGITS = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_POWER = re.compile(r"\^\{(-?)([0-9]+)\}")


def _number_cell(cell: str) -> str | None:
    """The MathML latex2mathml writes for a cell of `_CELL` (without the `<math><mrow>`
    around it), or None for a token it is not sure of."""
    out = []
    tokens = list(tokenize(cell))
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "10" and tokens[i + 1:i + 3] == ["^", "{"]:  # 10^{-05}
            end = tokens.index("}", i)
            power = _POWER.fullmatch("".join(tokens[i + 1:end + 1]))
            if power is None:
                return None
            sign = "<mo>&#x02212;</mo>" if power.group(1) else ""
            out.append(f"<msup><mn>10</mn><mrow>{sign}<mn>{power.group(2)}</mn></mrow></msup>")
            i = end + 1
            continue
        if _DIGITS.fullmatch(token):
            out.append(f"<mn>{token}</mn>")
        elif token[0] == "." and token[1:].isdigit():
            out.append(f"<mi>{token}</mi>")  # as latex2mathml has it
        elif token in _CELL_TOKENS:
            out.append(_CELL_TOKENS[token])
        else:
            return None
        i += 1
    return "".join(out)


def _latex2mathml(tex: str, display: bool) -> str:
    """MathML for prepared TeX by latex2mathml, or "" when it cannot read it."""
    from latex2mathml import walker
    from latex2mathml.converter import convert_to_element

    walker.tokenize = tokenize  # what its walker reads TeX with (see `tokenize`)
    try:
        tree = convert_to_element(tex, display="block" if display else "inline")
    except MemoryError:
        raise
    except Exception:  # latex2mathml raises its own errors and assorted others on bad TeX
        return ""
    out: list[str] = []
    _serialize(tree, out)
    return "".join(out)


_ATTRIBUTE = str.maketrans({"&": "&amp;", '"': "&quot;", "<": "&lt;", ">": "&gt;"})
_TEXT = str.maketrans({"<": "&lt;", ">": "&gt;"})


def _serialize(element: Any, out: list[str]) -> None:
    """latex2mathml's tree as markup. Its text holds character references (`&#x0003D;`) that
    it means to keep, so `&` stays; anything else that could be markup is escaped (its own
    serialiser unescapes the whole output, which lets `\\text{<b>}` out as a tag)."""
    out.append("<" + element.tag)
    for key, value in element.attrib.items():
        if key != "xmlns":
            out.append(f' {key}="{value.translate(_ATTRIBUTE)}"')
    out.append(">")
    if element.text:
        out.append(element.text.translate(_TEXT))
    for child in element:
        _serialize(child, out)
    out.append(f"</{element.tag}>")
    if element.tail:
        out.append(element.tail.translate(_TEXT))


# A text/latex output: mathematics between delimiters, and any text around it.
_LATEX_OUTPUT = re.compile(
    r"(?<!\\)\$\$(?P<dd>.+?)(?<!\\)\$\$|\\\[(?P<bracket>.+?)\\\]|\\\((?P<paren>.+?)\\\)"
    r"|(?<!\\)\$(?P<d>.+?)(?<!\\)\$"
    r"|(?P<env>\\begin\{(?P<name>[a-zA-Z]+\*?)\}.*?\\end\{(?P=name)\})", re.DOTALL)


def latex_output_html(text: str) -> str:
    """A text/latex output as HTML: its formulas as MathML, the text around them escaped
    (what MathJax shows in JupyterLab). Without any delimiter it is shown as text."""
    parts: list[str] = []
    end = 0
    for m in _LATEX_OUTPUT.finditer(text):
        parts.append(html.escape(text[end:m.start()]))
        inline = m.group("d") is not None or m.group("paren") is not None
        tex = next(g for g in (m.group("dd"), m.group("bracket"), m.group("paren"),
                               m.group("d"), m.group("env")) if g is not None)
        parts.append(tex_html(tex, display=not inline, shown=m.group(0)))
        end = m.end()
    if not parts:
        return f"<pre>{html.escape(text)}</pre>"
    parts.append(html.escape(text[end:]))
    return "".join(parts)
