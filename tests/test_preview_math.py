"""Mathematics in previews: TeX as MathML (gallery/previews/math.py), through the sanitiser's
MathML allowlist; prose, code and TeX it cannot or may not convert left as they are."""

from __future__ import annotations

import json
import re

from hypothesis import assume, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from gallery import previews
from gallery.previews import math

from . import corpus
from .corpus import latent


def page_of(*cells: dict) -> str:
    return previews.render_preview(json.dumps(new_notebook(cells=list(cells))).encode())


def body(page: str) -> str:
    return page[page.index("<main"):]


def maths(page: str) -> list[str]:
    return re.findall(r"<math display=\"(\w+)\">", page)


def test_it_turns_every_usual_kind_of_tex_into_mathml():
    page = page_of(new_markdown_cell(
        "Inline $y = ax + b$, \\(x^2\\) and \\\\(z_1\\\\).\n\n"
        "$$\\frac{a}{b}$$\n\n\\[ \\sqrt{2} \\]\n\n"
        "\\begin{equation} E = mc^2 \\end{equation}\n\n"
        "\\begin{align} a &= b \\\\ c &= d \\end{align}\n\n"
        "\\begin{gather*} u = v \\end{gather*}"))
    assert maths(page) == ["inline", "inline", "inline", "block", "block", "block", "block",
                           "block"]
    assert "<mfrac>" in page and "<msqrt>" in page and "<mtable" in page
    assert "<msup><mi>c</mi><mn>2</mn></msup>" in page
    assert "$" not in body(page) and "\\begin" not in body(page)
    assert latent(page)[0] == []


def test_it_turns_text_latex_outputs_into_mathml():
    qobj = ("Quantum object: dims = [[2], [2]], shape = (2, 2)\\begin{equation*}\\left("
            "\\begin{array}{*{11}c}1.0 & 0.0\\\\0.0 & 1.0\\\\\\end{array}\\right)"
            "\\end{equation*}")
    page = page_of(new_code_cell("x", execution_count=1, outputs=[
        new_output("execute_result", execution_count=1,
                   data={"text/latex": "$\\displaystyle x^{2}$", "text/plain": "x**2"}),
        new_output("display_data", data={"text/latex": qobj}),
        new_output("display_data", data={"text/latex": "no delimiters \\alpha"})]))
    assert len(maths(page)) == 2
    assert "Quantum object: dims = [[2], [2]]" in page
    assert "<mn>1.0</mn>" in page and "<mo>*</mo>" not in page  # *{11}c is a column spec
    assert "<pre>no delimiters \\alpha</pre>" in page
    assert latent(page)[0] == []


def test_it_prefers_tex_to_an_image_of_it_as_jupyterlab_does():
    page = page_of(new_code_cell("sympy", execution_count=1, outputs=[new_output(
        "display_data", data={"text/latex": "$x^{2}$", "image/png": corpus.png(),
                              "text/plain": "x**2"})]))
    assert maths(page) == ["inline"] and "<img" not in page


def test_it_leaves_dollar_amounts_in_prose_as_text():
    page = page_of(new_markdown_cell("It costs $5 and $10, or $20 in all; a $ sign alone."))
    assert "<math" not in page
    assert "It costs $5 and $10, or $20 in all; a $ sign alone." in page


def test_it_leaves_math_in_code_spans_and_blocks_alone():
    page = page_of(new_markdown_cell(
        "Prices $5 and `$x$` and `\\(y\\)`.\n\n```\n$$ a $$\n\\begin{equation} b \\end{equation}"
        "\n```\n\n    $c$ indented\n"))
    assert "<math" not in page
    for code in ("<code>$x$</code>", "<code>\\(y\\)</code>", "$$ a $$",
                 "\\begin{equation} b \\end{equation}", "$c$ indented"):
        assert code in page, code


def test_it_shows_tex_it_cannot_convert_as_readable_code():
    page = page_of(new_markdown_cell("Broken $x^1^2$ and fine $x^2$."))
    assert '<code class="gallery-tex">$x^1^2$</code>' in page
    assert len(maths(page)) == 1


def test_it_refuses_tex_that_is_too_long_too_deep_or_over_the_budget():
    long = "x+" * (math.MAX_TEX_CHARS // 2 + 1)
    deep = "{" * (math.MAX_TEX_DEPTH + 1) + "x" + "}" * (math.MAX_TEX_DEPTH + 1)
    for tex in (long, deep, "\\left(" * 50 + "x" + "\\right)" * 50):
        assert math.tex_html(tex, display=False, shown=f"${tex}$").startswith(
            '<code class="gallery-tex">$'), tex[:20]
    assert math.tex_html("{" * 10 + "x" + "}" * 10, display=False, shown="").startswith("<math")
    math.start_render()
    math._budget[0] = 10
    assert math.tex_html("x+y+z+w+v+u", display=False, shown="$…$").startswith("<code")
    math.start_render()
    assert math.tex_html("x+y+z+w+v+u", display=False, shown="$…$").startswith("<math")


def test_it_removes_links_styles_and_actions_from_mathml():
    page = page_of(new_markdown_cell(
        "$\\href{javascript:alert(1)}{click}$ $\\style{background:url(http://x.invalid/)}{s}$ "
        "$\\color{url(http://x.invalid/c)}{c}$ $\\text{<img src=x onerror=alert(1)>}$ "
        "$\\unicode{<b>}$\n\n"
        '<math><maction actiontype="toggle"><mi>m</mi></maction><semantics><mi>s</mi>'
        '<annotation-xml encoding="text/html"><img src=x><b>hidden</b></annotation-xml>'
        '</semantics><mi href="http://x.invalid/" style="color:red" mathvariant="bold">v</mi>'
        '</math>'))
    for gone in ("href=", "style=", "mathcolor=", "maction", "annotation-xml", "hidden",
                 "<img", "onerror=alert(1)>"):
        assert gone not in body(page).replace('href="#', ""), gone
    assert "&lt;img&nbsp;src=x" in page  # \text{…} shown as text
    assert '<code class="gallery-tex">$\\unicode{&lt;b&gt;}$</code>' in page
    assert '<mi mathvariant="bold">v</mi>' in page
    assert latent(page)[0] == []


def test_it_converts_each_formula_once():
    math._convert.cache_clear()
    page_of(new_markdown_cell("$a+b$ and $a+b$\n\n$a+b$"))
    info = math._convert.cache_info()
    assert (info.misses, info.hits) == (1, 2)


TEX_PIECES = ["x", "Y", "7", "3.5", ".25", " ", "\n", "{", "}", "^", "_", "^2", "_i", "&", "\\\\",
              "\\frac", "\\frac12", "\\dfrac.5", "\\alpha", "\\mathbb{R}", "\\mathrm{d}",
              "\\mathcal{H}", "\\mathbin{x}", "\\operatorname{tr}", "\\operatorname* {arg max}",
              "\\begin{matrix}", "\\end {matrix}", "\\text{a b}", "\\textbf{}", "\\verb|x y|",
              "\\verb+", "% note\n", "%", "3 cm", "-2.5em", "\\hspace{1 pt}", "\\,", "\\!",
              "\\{", "\\|", "\\left(", "\\right)", "'", "+", "=", "<", "é", "\\unicode",
              "\\color{red}", "\\href{x}"]


@given(st.lists(st.sampled_from(TEX_PIECES), max_size=30).map("".join))
@hsettings(max_examples=400, deadline=None)
def test_it_tokenizes_tex_as_latex2mathml_does(tex):
    from latex2mathml import tokenizer

    def outcome(tokenize, *args):  # the tokens, or the error it stops with (`\\verb+`)
        try:
            return list(tokenize(*args))
        except Exception as exc:  # noqa: BLE001
            return type(exc)

    for comments in (True, False):
        assert outcome(math.tokenize, tex, comments) == outcome(tokenizer.tokenize, tex, comments)


CELL_PIECES = ["0", "0.0", "1", "-2.5", "0.595", "+", "-", "(", ")", "e", "j", "1e-05", "0.5j",
               " ", ".", "12", ".5", "1.5.2", "\\times10^{-05}", "\\times 10^{3}", "\\cdots",
               "\\vdots", "\\ddots"]
GOOD_CELLS = st.one_of(
    st.lists(st.sampled_from(CELL_PIECES), min_size=1, max_size=6).map("".join),
    st.sampled_from(["(-0.256+6.823\\times10^{-05}j)", "(1.137\\times10^{-04}-2.714\\times"
                     "10^{-06}j)", "-1.313\\times10^{-06}", "\\cdots", " \\vdots "]))
# Mostly cells it takes, now and then one that leaves the whole to latex2mathml.
CELLS = st.one_of(*[GOOD_CELLS] * 19, st.sampled_from(["", " ", "2 3", "^2", "\\frac12"]))


@given(st.lists(st.sampled_from("lcr"), min_size=1, max_size=4).flatmap(lambda aligns: st.tuples(
           st.just(aligns), st.lists(st.lists(CELLS, min_size=1, max_size=len(aligns)),
                                     min_size=1, max_size=4))),
       st.sampled_from([0, 0, 0, 0, 1, -1]), st.booleans(), st.booleans(), st.booleans())
@hsettings(max_examples=1000, deadline=None)
def test_it_writes_a_matrix_of_numbers_as_latex2mathml_does(table, misfit, last_break, display,
                                                             spaced):
    # `_number_array` puts a matrix together from its cells' MathML: it must be latex2mathml's
    # MathML of the whole, or nothing (then latex2mathml converts it). Rows may have fewer
    # cells than columns; now and then the last has one more or one less.
    aligns, rows = table
    rows[-1] = rows[-1] + ["1"] if misfit > 0 else rows[-1][:-1] if misfit else rows[-1]
    body = "\\\\".join((" & " if spaced else "&").join(row) for row in rows)
    end = "\\\\" if last_break else ""
    tex = f"\\left(\\begin{{array}}{{{''.join(aligns)}}}{body}{end}\\end{{array}}\\right)"
    fast = math._number_array(tex, display)
    event("made from its cells" if fast else "left to latex2mathml")
    assert fast == "" or fast == math._latex2mathml(tex, display), tex


def test_it_writes_the_matrices_of_qutip_objects_itself():
    tex = ("\\begin{equation*}\\left(\\begin{array}{*{3}c}0.595 & 0.0 & (-0.256+6.823"
           "\\times10^{-05}j)\\\\0.0 & -1.0j & \\cdots\\\\\\vdots & 1e-05 & \\ddots\\\\"
           "\\end{array}\\right)\\end{equation*}")
    prepared = math._prepare(tex)
    assert math._number_array(prepared, True) == math._latex2mathml(prepared, True) != ""
    assert math._number_array("\\left(\\begin{array}{c}\\frac12\\end{array}\\right)", True) == ""


@given(GOOD_CELLS)
@hsettings(max_examples=1000, deadline=None)
def test_it_writes_a_cell_of_numbers_as_latex2mathml_does(cell):
    assume(cell.strip(" "))  # a blank cell leaves the matrix to latex2mathml
    whole = math._latex2mathml(cell, False)
    inner = math._number_cell(cell)
    event("written" if inner is not None else "left to latex2mathml")
    assert inner is None or (whole.startswith('<math display="inline"><mrow>')
                             and whole[29:-14] == inner), cell
