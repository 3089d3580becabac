"""The training Program: the loss after the forward stages, and the backward stages in reverse order."""

from __future__ import annotations

from dataclasses import dataclass

from sympy.matrices.expressions.matexpr import MatrixSymbol

from ..program import Equation, Interface, Program, Stage
from .derive import BackwardStage, TrainingUnsupported, derive, grad_symbol
from .loss import MeanSquaredError, NextTokenCrossEntropy


@dataclass
class TrainingProgram:
    program: Program
    loss: Stage  # L = loss(output, target): its input is the forward output
    target: MatrixSymbol  # the tokens t (next-token prediction) or the target vector y*
    backward: list[BackwardStage]  # the loss's first, then the forward stages' in reverse order

    @property
    def loss_symbol(self) -> MatrixSymbol:
        return self.loss.output


def loss_stage(program: Program) -> tuple[Stage, MatrixSymbol]:
    """The loss as a stage after the last: cross-entropy of the next token, or an MLP's squared error."""
    output = program.stages[-1].output
    loss = MatrixSymbol("L", 1, 1)
    names = {output.name: program.stages[-1].locals_latex.get(output.name, output.name), "L": "L"}
    if program.interface == Interface.CAUSAL_LM:
        target = program.input_symbol
        equation = Equation(loss, NextTokenCrossEntropy(output, target))
    elif program.interface == Interface.VECTOR:
        target = MatrixSymbol("y_target", *output.shape)
        names["y_target"] = "y^{*}"
        equation = Equation(loss, MeanSquaredError(output, target))
    else:
        raise TrainingUnsupported(f"training covers causal language models and MLPs; {program.family} is an "
                                  "encoder with no loss of its own here")
    return Stage("loss", "Loss", "L", output, [equation], [], names, extra_inputs=(target,)), target


def training_program(program: Program) -> TrainingProgram:
    """The loss and every stage's backward, each derived from the forward equations by the ops' VJPs."""
    loss, target = loss_stage(program)
    backward = [derive(loss, None)]
    for index, stage in reversed(list(enumerate(program.stages))):
        first_takes_data = index == 0  # token ids or the input vector: no gradient wanted
        backward.append(derive(stage, grad_symbol(stage.output), input_differentiable=not first_takes_data))
    return TrainingProgram(program, loss, target, backward)
