"""The emitted numpy module against PyTorch eager (transformers) on the same random GPT-2-124M weights.

Both run in this process, float32, with the same number of threads (OpenBLAS for numpy; OpenMP
and MKL for torch). Their calls alternate and the best time of each is kept, so load from
elsewhere on the machine touches both alike. The sgemm peak and the copy bandwidth are measured
in this same process, in the same mode.

Two modes: the issue's figure, 2 threads each timed by the wall clock; and 1 thread each timed by
CPU time, which other processes on a shared machine barely move (the wall clock of 2 threads on 2
busy cores measures the scheduler as much as the code).
"""

from __future__ import annotations

import cProfile
import pstats
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

import eqcompile
from eqcompile.emit.python import import_module
from eqcompile.verify import compare
from loading import smollm2_gguf
from measure import best_time, copy_bandwidth, sgemm_peak

SEQUENCE_LENGTHS = (1, 32, 128, 512)
REPEATS = {1: 10, 32: 6, 128: 5, 512: 3}  # alternated calls of each side per length
PROMPT, NEW_TOKENS, DECODE_ROUNDS = 16, 32, 2
LONG_CONTEXT = 896  # step cost with a long cache: attention reads every cached row
PROFILED_SEQ = 128
SETTLE_SECONDS = 0.2  # pause before each timed call (see alternate)
TARGET_RATIO, TARGET_PEAK_FRACTION = 0.5, 0.6
QUICK_CONFIG = dict(n_layer=2, n_embd=128, n_head=2, n_positions=64, vocab_size=1000)


@dataclass(frozen=True)
class Mode:
    name: str
    threads: int
    clock: Callable[[], float]


def modes(threads: int) -> list[Mode]:
    return [Mode(f"{threads} threads, wall time", threads, time.perf_counter),
            Mode("1 thread, CPU time", 1, time.process_time)]


def make_checkpoint(folder: Path, quick: bool) -> Path:
    """Random GPT-2-124M weights (transformers' own initialisation), saved as a user would."""
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    config = transformers.GPT2Config(bos_token_id=None, eos_token_id=None, **(QUICK_CONFIG if quick else {}))
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


def forward_flops(config: dict, n: int) -> int:
    """FLOPs (2 per multiply-add) of the matrix products of a forward over n tokens, as computed:
    the projections and MLP of every layer, the scores and A V over all n x n pairs, the logits."""
    d, inner, layers, vocab = config["n_embd"], config["n_inner"], config["n_layer"], config["vocab_size"]
    per_layer = n * (d * 3 * d + d * d + 2 * d * inner) + 2 * n * n * d
    return 2 * (layers * per_layer + n * d * vocab)


def alternate(functions: dict, repeats: int, clock, warm: bool = True) -> dict[str, float]:
    """Best time of each function, their calls interleaved (after one warm-up call each).

    A pause before each call lets the other library's idle threads go to sleep first (OpenBLAS's
    workers poll for about 0.1 s after a call, libgomp's spin too): each is timed as if alone.
    """
    if warm:
        for function in functions.values():
            function()
    best = dict.fromkeys(functions, float("inf"))
    for _ in range(repeats):
        for name, function in functions.items():
            time.sleep(SETTLE_SECONDS)
            start = clock()
            function()
            best[name] = min(best[name], clock() - start)
    return best


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


def run(folder: Path, threads: int, quick: bool = False) -> dict:
    import torch
    import transformers
    from threadpoolctl import threadpool_limits

    checkpoint = make_checkpoint(folder / "gpt2", quick)
    compiled = eqcompile.compile(checkpoint)
    module = import_module(compiled.to_python(folder / "emitted"), "benchmark_emitted")
    reference = transformers.GPT2LMHeadModel.from_pretrained(checkpoint).eval()
    config = compiled.program.config
    rng = np.random.default_rng(0)
    inputs = {n: rng.integers(0, config["vocab_size"], size=n) for n in ((1, 8, 32) if quick else SEQUENCE_LENGTHS)}
    prompt = rng.integers(0, compiled.program.vocab, size=PROMPT).tolist()
    new = 8 if quick else NEW_TOKENS

    def numpy_forward(n):
        return module.forward(inputs[n])

    def torch_forward(n):
        with torch.no_grad():
            return reference(torch.as_tensor(inputs[n])[None]).logits[0]

    result: dict = {"checkpoint": str(checkpoint), "faithfulness": {}, "modes": {}}
    for n in inputs:
        output = numpy_forward(n)
        max_abs, max_rel, ok = compare(output, torch_forward(n).numpy())
        if not ok or output.dtype != np.float32:
            raise AssertionError(f"seq {n}: the emitted forward differs from transformers ({max_abs:.2e}, {output.dtype})")
        result["faithfulness"][n] = {"max_abs_error": max_abs, "max_rel_error": max_rel, "dtype": str(output.dtype)}

    decoder = Decoder(module, reference, prompt, new)
    result["decode_same_tokens"] = decoder.numpy_generate() == decoder.torch_generate()
    weight_bytes = compiled.stats(PROMPT + new).weight_bytes_per_token
    for mode in modes(threads):
        with threadpool_limits(mode.threads, user_api="blas"):
            torch.set_num_threads(mode.threads)
            peak, bandwidth = sgemm_peak(mode.clock), copy_bandwidth(mode.clock)
            forward = {}
            for n in inputs:
                times = alternate({"numpy": lambda n=n: numpy_forward(n), "torch": lambda n=n: torch_forward(n)},
                                  2 if quick else REPEATS[n], mode.clock)
                forward[n] = {**times, "ratio": times["numpy"] / times["torch"], "flops": forward_flops(config, n)}
                # called back to back: BLAS threads awake and caches warm, as in a loop over batches
                forward[n]["numpy_back_to_back"] = best_time(lambda n=n: numpy_forward(n), 3 if quick else 5,
                                                             mode.clock)
            decoded = decoder.measure(1 if quick else DECODE_ROUNDS, mode.clock)
            peak, bandwidth = max(peak, sgemm_peak(mode.clock)), max(bandwidth, copy_bandwidth(mode.clock))
        for row in forward.values():
            row["numpy_peak_fraction"] = row["flops"] / row["numpy"] / peak
            row["numpy_back_to_back_peak_fraction"] = row["flops"] / row["numpy_back_to_back"] / peak
            row["torch_peak_fraction"] = row["flops"] / row["torch"] / peak
        decoded["bandwidth_limit_tokens_per_s"] = bandwidth / weight_bytes
        decoded["step_bandwidth_fraction"] = decoded["step_tokens_per_s"] / decoded["bandwidth_limit_tokens_per_s"]
        result["modes"][mode.name] = {"threads": mode.threads, "peak_flops": peak, "bandwidth": bandwidth,
                                      "forward": forward, "decode": decoded}
    torch.set_num_threads(threads)

    profiled = 32 if quick else PROFILED_SEQ
    with threadpool_limits(1, user_api="blas"):
        result["profile"] = {"seq": profiled, "threads": 1,
                             "seconds": profile(lambda: module.forward(rng.integers(0, config["vocab_size"], size=profiled)))}
    result["decode_setup"] = {"prompt": PROMPT, "new_tokens": new, "weight_bytes_per_token": weight_bytes}
    if not quick and (source := smollm2_gguf()) is not None:
        with threadpool_limits(threads, user_api="blas"):
            result["smollm2_decode"] = smollm2_decode(source, folder / "smollm2", threads)
    return result


def smollm2_decode(source: Path, folder: Path, threads: int) -> dict:
    """Greedy decoding of a trained Llama-family model (SmolLM2-135M, GQA 9/3), 2 threads, wall time.

    transformers reads the same GGUF file; its end-of-text token is not special to either side here
    (the emitted generate does not stop at it), so both produce the same tokens.
    """
    import torch
    import transformers

    module = import_module(eqcompile.compile(source).to_python(folder), "benchmark_smollm2")
    reference = transformers.AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name).eval()
    reference.generation_config.eos_token_id = None
    torch.set_num_threads(threads)
    decoder = Decoder(module, reference, module.encode("The capital of France is"), NEW_TOKENS)
    decoded = decoder.measure(DECODE_ROUNDS, time.perf_counter)
    return {**decoded, "same_tokens": decoder.numpy_generate() == decoder.torch_generate(),
            "prompt": len(decoder.prompt), "new_tokens": NEW_TOKENS}


class Decoder:
    """Greedy generation of the same tokens: the emitted generate/step against transformers' generate."""

    def __init__(self, module, reference, prompt: list[int], new: int):
        self.module, self.reference, self.prompt, self.new = module, reference, prompt, new
        self.prefilled, _ = module.advance(module.init_state(), prompt[:-1])
        self.long_context = min(LONG_CONTEXT, module.n_ctx - new)
        long_prompt = [prompt[i % len(prompt)] for i in range(self.long_context - 1)]
        self.long_prefilled, _ = module.advance(module.init_state(), long_prompt)

    def numpy_generate(self):
        return self.module.generate(self.prompt, self.new, seed=0, temperature=0)

    def numpy_steps(self, state=None):  # the prompt already in the cache: one step per new token
        state, token = self.prefilled if state is None else state, self.prompt[-1]
        for _ in range(self.new):
            state, token = self.module.step(state, token, 0.0, temperature=0)

    def numpy_steps_long(self):
        self.numpy_steps(self.long_prefilled)

    def torch_generate(self):
        import torch

        with torch.no_grad():
            out = self.reference.generate(torch.tensor([self.prompt]), max_new_tokens=self.new,
                                          min_new_tokens=self.new, do_sample=False, pad_token_id=0,
                                          attention_mask=torch.ones(1, len(self.prompt), dtype=torch.long))
        return out[0, len(self.prompt):].tolist()

    def measure(self, rounds: int, clock) -> dict:
        times = alternate({"numpy_generate": self.numpy_generate, "torch_generate": self.torch_generate,
                           "numpy_steps": self.numpy_steps, "numpy_steps_long": self.numpy_steps_long},
                          rounds, clock, warm=False)
        return {"numpy_tokens_per_s": self.new / times["numpy_generate"],
                "torch_tokens_per_s": self.new / times["torch_generate"],
                "ratio": times["numpy_generate"] / times["torch_generate"],
                "step_tokens_per_s": self.new / times["numpy_steps"],
                "long_context": self.long_context, "step_tokens_per_s_long": self.new / times["numpy_steps_long"]}


def table(result: dict) -> list[str]:
    lines = ["| mode | seq | numpy | PyTorch | numpy / PyTorch | numpy: % of sgemm peak | PyTorch: % of peak "
             "| numpy back to back: time, % of peak |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, mode in result["modes"].items():
        for n, row in mode["forward"].items():
            lines.append(f"| {name} | {n} | {row['numpy'] * 1e3:.1f} ms | {row['torch'] * 1e3:.1f} ms | "
                         f"**{row['ratio']:.2f}** | {100 * row['numpy_peak_fraction']:.0f}% | "
                         f"{100 * row['torch_peak_fraction']:.0f}% | {row['numpy_back_to_back'] * 1e3:.1f} ms, "
                         f"{100 * row['numpy_back_to_back_peak_fraction']:.0f}% |")
    lines += ["", "sgemm peak and copy bandwidth measured in the same process: " + "; ".join(
        f"{name}: {mode['peak_flops'] / 1e9:.1f} GFLOP/s, {mode['bandwidth'] / 1e9:.1f} GB/s"
        for name, mode in result["modes"].items()) + ".",
        "Faithfulness of the timed outputs (max abs error vs transformers): " + ", ".join(
        f"seq {n}: {row['max_abs_error']:.1e}" for n, row in result["faithfulness"].items()) + "; all float32.",
        f"Targets: numpy / PyTorch <= {TARGET_RATIO} at every length, >= {100 * TARGET_PEAK_FRACTION:.0f}% "
        "of the sgemm peak at seq 128. Alternated calls each follow a pause (so that neither library's "
        "threads are still spinning), which leaves each starting cold; back to back, numpy's own calls follow "
        "each other.", ""]
    profiled = result["profile"]
    lines += [f"Profile of one numpy forward at seq {profiled['seq']}, {profiled['threads']} thread (CPU time in each "
              "function's own code; a stage function's own time is its matrix products):", "",
              "| function | ms |", "|---|---:|"]
    lines += [f"| {name} | {seconds * 1e3:.1f} |" for name, seconds in profiled["seconds"].items() if seconds >= 5e-4]
    setup = result["decode_setup"]
    lines += ["", f"Greedy decoding, {setup['prompt']}-token prompt, {setup['new_tokens']} new tokens "
              f"({'the same tokens' if result['decode_same_tokens'] else 'DIFFERENT tokens'} from both); "
              f"{setup['weight_bytes_per_token'] / 1e6:.0f} MB of weights read per token:", "",
              "| mode | transformers `generate` | emitted `generate` (time ratio) | emitted `step`, prompt cached "
              "| bandwidth limit (`step` reaches) | `step` after a long context |", "|---|---:|---:|---:|---:|---:|"]
    for name, mode in result["modes"].items():
        d = mode["decode"]
        lines.append(f"| {name} | {d['torch_tokens_per_s']:.1f} tokens/s | {d['numpy_tokens_per_s']:.1f} tokens/s "
                     f"(**{d['ratio']:.2f}**) | {d['step_tokens_per_s']:.1f} tokens/s | "
                     f"{d['bandwidth_limit_tokens_per_s']:.1f} tokens/s (**{100 * d['step_bandwidth_fraction']:.0f}%**) | "
                     f"{d['step_tokens_per_s_long']:.1f} tokens/s at {d['long_context']} tokens |")
    if smol := result.get("smollm2_decode"):
        lines += ["", f"SmolLM2-135M (trained, GQA 9/3, from its GGUF file), greedy, {smol['prompt']}-token prompt, "
                  f"{smol['new_tokens']} new tokens ({'the same tokens' if smol['same_tokens'] else 'DIFFERENT tokens'} "
                  "from both), 2 threads, wall time: transformers `generate` "
                  f"{smol['torch_tokens_per_s']:.1f} tokens/s, emitted `generate` {smol['numpy_tokens_per_s']:.1f} "
                  f"tokens/s (time ratio **{smol['ratio']:.2f}**), emitted `step` {smol['step_tokens_per_s']:.1f} "
                  f"tokens/s, {smol['step_tokens_per_s_long']:.1f} tokens/s after {smol['long_context']} tokens."]
    return lines
