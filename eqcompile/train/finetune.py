"""``eqcompile train MODEL DATA.txt``: fine-tune with the emitted ``adamw_step``, write the new checkpoint.

The text is tokenized by the model's own tokenizer and cut into windows of the context length; step
k trains on window k (cycling). The result is the checkpoint's folder again, with the trained tensors:
``model.safetensors`` (float32), ``config.json`` and the tokenizer files, so transformers and eqcompile
both load it.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import EqcompileError
from ..program import Interface
from .derive import TrainingUnsupported

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
                   "generation_config.json")


@dataclass
class FineTuned:
    losses: list[float]  # L before each step, on that step's window
    before: float  # the mean loss over every window, before and after training
    after: float
    folder: Path


def windows(ids: list[int], length: int) -> list[np.ndarray]:
    """The token ids cut into consecutive windows of ``length`` (the last may be shorter, never below 2)."""
    cuts = [np.asarray(ids[start:start + length]) for start in range(0, len(ids), length)]
    return [w for w in cuts if len(w) >= 2]


def fine_tune(compiled, text: str, steps: int, lr: float, out: Path, weight_decay: float = 0.01,
              report: Callable[[int, float], None] | None = None) -> FineTuned:
    """``steps`` AdamW steps of the emitted module on ``text``; the trained checkpoint written to ``out``."""
    program = compiled.program
    if program.interface != Interface.CAUSAL_LM:
        raise TrainingUnsupported("eqcompile train fine-tunes causal language models on text")
    tokenizer = compiled.tokenizer
    if tokenizer is None:
        raise EqcompileError("eqcompile train needs the model's own tokenizer (none found beside the checkpoint)")
    try:
        ids = list(tokenizer.encode(text))
    except (KeyError, ValueError) as e:
        raise EqcompileError(f"the model's tokenizer cannot encode the text: {e}") from None
    batches = windows(ids, program.max_seq)
    if not batches:
        raise EqcompileError("the text is too short to train on: it needs at least 2 tokens")
    with tempfile.TemporaryDirectory(prefix="eqcompile-train-") as folder:  # model.py --train, imported
        module = _emitted(compiled, Path(folder))
        state = module.adamw_init()
        before, losses = _mean_loss(module, batches, state["tensors"]), []
        for step in range(steps):
            state, value = module.adamw_step(state, batches[step % len(batches)], lr, weight_decay=weight_decay)
            losses.append(float(value))
            if report is not None:
                report(step + 1, float(value))
        after = _mean_loss(module, batches, state["tensors"])
    write_checkpoint(compiled, state["tensors"], out)
    return FineTuned(losses, before, after, Path(out))


def _mean_loss(module, batches, tensors) -> float:
    return float(np.mean([module.loss(window, tensors) for window in batches]))


def _emitted(compiled, folder: Path):
    from ..emit.python import import_module, write_module

    path = write_module(compiled.program, compiled.checkpoint, folder / "module", train=True)
    return import_module(path, f"eqcompile_train_{abs(hash(str(folder)))}")


def write_checkpoint(compiled, tensors: dict[str, np.ndarray], out: Path) -> None:
    """Every tensor of the checkpoint (the trained ones replaced) as float32 safetensors, with the config
    and tokenizer files beside it; nothing reaches ``out`` unless all of it is written."""
    from safetensors.numpy import save

    from ..emit.files import output_set

    checkpoint = compiled.checkpoint
    if checkpoint.config is None or checkpoint.folder is None:
        raise EqcompileError("eqcompile train needs a model folder with its config.json")
    arrays = {name: np.ascontiguousarray(tensors[name] if name in tensors else checkpoint.tensor(name),
                                         dtype=np.float32) for name in checkpoint.tensors}
    owned = ("model.safetensors", "config.json", *TOKENIZER_FILES)
    with output_set(Path(out), owned) as staging:
        (staging / "model.safetensors").write_bytes(save(arrays, metadata={"format": "pt"}))
        config = {**checkpoint.config, **{key: "float32" for key in ("torch_dtype", "dtype") if key in checkpoint.config}}
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        for name in TOKENIZER_FILES:
            source = Path(checkpoint.folder) / name
            if source.is_file() and not source.is_symlink():
                shutil.copyfile(source, staging / name)


def progress_printer(steps: int) -> Callable[[int, float], None]:
    """Loss per step on stdout; a progress bar on stderr when it is a terminal."""
    import click
    from tqdm import tqdm

    bar = tqdm(total=steps, unit="step", disable=not sys.stderr.isatty(), leave=False)

    def report(step: int, value: float) -> None:
        line = f"step {step:>{len(str(steps))}}/{steps}  loss {value:.4f}"
        if bar.disable:
            click.echo(line)
        else:
            bar.write(line, file=sys.stdout)
            bar.update(1)
        if step == steps:
            bar.close()
    return report
