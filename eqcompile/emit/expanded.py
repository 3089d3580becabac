"""Printing the literal expansion: LaTeX (one breqn equation per named term) and pure Python."""

from __future__ import annotations

from sympy.printing.pycode import PythonCodePrinter

from ..expand import Expansion
from ..program import Interface
from .latex import EquationPrinter
from .templates import render_template
from .text import tex_escape

PACKAGES = ("amsmath", "amssymb", "breqn")  # breqn breaks the long sums across lines


def expansion_latex(expansion: Expansion) -> str:
    """Every named term as ``name = expression`` in order; the last ones are the outputs."""
    names = {term.symbol: term.latex for term in expansion.terms} | expansion.input_latex
    printer = EquationPrinter({"symbol_names": names})
    program = expansion.program
    if program.interface == Interface.VECTOR:
        inputs = r"the input vector $x$"
    else:
        inputs = (rf"the tokens $t_1, \dots, t_{{{expansion.seq}}}$ as one-hot indicators "
                  r"$[t_i = v]$ (1 if token $i$ is $v$, else 0)")
        fixed = ([rf"positions $p = 0, \dots, {expansion.seq - 1}$"] if program.positions is not None else []) + [
            rf"\texttt{{{tex_escape(symbol.name)}}} $= {value}$ at every token"
            for symbol, value in program.input_defaults.items()]
        if fixed:
            inputs += " (fixed: " + ", ".join(fixed) + ")"
    lines = [f"% eqcompile: the literal {program.family} equation, n = {expansion.seq}",
             "% needs: " + ", ".join(PACKAGES),
             rf"\noindent The model \texttt{{{tex_escape(program.source)}}} with every weight substituted, "
             rf"as {len(expansion.terms)} named terms in {inputs}. Each term is defined once and used by name; "
             r"the last ones are the outputs.\par"]
    for term in expansion.terms:
        lines.append(rf"\begin{{dmath*}}{term.latex} = {printer.doprint(term.expr)}\end{{dmath*}}")
    return "\n".join(lines) + "\n"


def expansion_python(expansion: Expansion) -> str:
    """A pure-Python module (``math`` only) computing the outputs from the inputs, term by term."""
    printer = PythonCodePrinter({"fully_qualified_modules": True})
    body = [f"{term.symbol.name} = {printer.doprint(term.expr)}" for term in expansion.terms]
    outputs = [[printer.doprint(expansion.outputs[r, c]) for c in range(expansion.outputs.cols)]
               for r in range(expansion.outputs.rows)]
    program = expansion.program
    return render_template(
        "expanded.py.j2", family=program.family, source=program.source, seq=expansion.seq,
        interface=program.interface, vocab=program.vocab, inputs=[s.name for s in expansion.inputs],
        defaults={symbol.name: value for symbol, value in program.input_defaults.items()},
        body=body, outputs=outputs)
