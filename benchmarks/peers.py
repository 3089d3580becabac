"""One implementation of a model, alone in a fresh process, timed as its users run it.

    python peers.py SPEC.json IMPLEMENTATION RESULT.json

``numeric.py`` writes SPEC.json (the model's files, the token ids, the repeats) and starts this
script once per implementation, one after another. Here: the machine's sgemm peak and copy
bandwidth (in this process, before and after, the better kept), a forward at each length (best
and median of the repeats after a warm-up call), and greedy decoding; the logits and tokens go
to a .npz beside RESULT.json, for the parent to compare across implementations.

Implementations:
- ``numpy``: the emitted model.py, imported from its file (numpy only; eqcompile not imported);
- ``torch``: transformers' ``from_pretrained`` in float32 with ``attn_implementation="sdpa"``,
  called under ``torch.no_grad()`` (PyTorch eager), decoding with ``generate`` (KV cache);
- ``jax``: the emitted model_jax.py (float32, jitted per length bucket; XLA's CPU threads set by
  the ``NPROC`` environment variable, which ``numeric.py`` sets), decoding with its ``generate``
  (a fixed-size cache in power-of-two buckets, buffers donated); the warm-up calls compile;
- ``onnxruntime``: the same transformers model exported by ``torch.onnx.export(dynamo=True)``,
  CPU execution provider. The exported graph takes the whole sequence and keeps no cache, so
  its decoding recomputes the prefix at every token (what an export without ``past_key_values``
  gives a user).
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from measure import copy_bandwidth, describe_blas, sgemm_peak, timings


def _module_from(path: Path, name: str):
    """An emitted module imported from its file (eqcompile itself stays unimported here)."""
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def numpy_model(spec: dict):
    module = _module_from(Path(spec["model_py"]), "model")

    def generate(prompt, new):
        return module.generate(prompt, new, seed=0, temperature=0)

    def cached_steps(prompt, new):  # a function: with the prompt already in the cache, one step per new token
        prefilled = module.advance(module.init_state(), prompt[:-1])[0]

        def steps():
            state, token = prefilled, prompt[-1]
            for _ in range(new):
                state, token = module.step(state, token, 0.0, temperature=0)
        return steps

    return module.forward, generate, cached_steps


def torch_model(spec: dict):
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    torch.set_num_threads(spec["threads"])
    model = transformers.AutoModelForCausalLM.from_pretrained(spec["hf_folder"], dtype=torch.float32,
                                                              attn_implementation="sdpa").eval()
    model.generation_config.eos_token_id = None  # the same number of tokens as the others

    def forward(tokens):
        with torch.no_grad():
            return model(torch.as_tensor(tokens)[None]).logits[0].numpy()

    def generate(prompt, new):
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
        return out[0, len(prompt):].tolist()

    return forward, generate, None


def onnxruntime_model(spec: dict):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = spec["threads"], 1
    session = onnxruntime.InferenceSession(spec["onnx"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def forward(tokens):
        return session.run(None, {name: np.asarray(tokens, dtype=np.int64)[None]})[0][0]

    def generate(prompt, new):  # no cache in the graph: the whole sequence at every token
        tokens = list(prompt)
        for _ in range(new):
            tokens.append(int(np.argmax(forward(tokens)[-1])))
        return tokens[len(prompt):]

    return forward, generate, None


def jax_model(spec: dict):
    module = _module_from(Path(spec["model_jax_py"]), "model_jax")

    def generate(prompt, new):
        return module.generate(prompt, new, seed=0, temperature=0)

    def cached_steps(prompt, new):  # as numpy_model's; every step after the first donates its state's cache
        prefilled = module.advance(module.init_state(), prompt[:-1])[0]

        def steps():
            state, token = module.step(prefilled, prompt[-1], 0.0, temperature=0)
            for _ in range(new - 1):
                state, token = module.step(state, token, 0.0, temperature=0, donate=True)
        return steps

    return module.forward, generate, cached_steps


IMPLEMENTATIONS = {"numpy": numpy_model, "torch": torch_model, "onnxruntime": onnxruntime_model, "jax": jax_model}


def summary(times: list[float]) -> dict:
    return {"best": min(times), "median": statistics.median(times), "runs": len(times)}


def main(spec_path: str, implementation: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    inputs = np.load(spec["tokens"])
    started = time.perf_counter()
    forward, generate, cached_steps = IMPLEMENTATIONS[implementation](spec)
    result = {"implementation": implementation, "load_seconds": time.perf_counter() - started,
              "load_average": [round(x, 2) for x in os.getloadavg()], "blas": describe_blas(),
              "versions": versions(implementation), "forward": {}}
    peak, bandwidth = sgemm_peak(), copy_bandwidth()
    outputs = {}
    for key in spec["lengths"]:
        tokens = inputs[f"seq{key}"]
        outputs[f"logits{key}"] = np.asarray(forward(tokens))  # the warm-up call, whose logits are compared
        result["forward"][key] = summary(timings(lambda: forward(tokens), spec["repeats"][str(key)], warm=False))
    prompt, new = inputs["prompt"].tolist(), spec["new_tokens"]
    outputs["decoded"] = np.asarray(generate(prompt, new))
    result["decode"] = summary(timings(lambda: generate(prompt, new), spec["decode_repeats"], warm=False))
    if cached_steps is not None:
        result["cached_steps"] = summary(timings(cached_steps(prompt, new), spec["decode_repeats"], warm=False))
    result["peak_flops"] = max(peak, sgemm_peak())
    result["bandwidth"] = max(bandwidth, copy_bandwidth())
    np.savez(Path(result_path).with_suffix(".npz"), **outputs)
    Path(result_path).write_text(json.dumps(result, indent=1))


def versions(implementation: str) -> dict:
    found = {"numpy": np.__version__}
    for name in {"torch": ("torch", "transformers"), "onnxruntime": ("onnxruntime",),
                 "jax": ("jax", "jaxlib")}.get(implementation, ()):
        found[name] = __import__(name).__version__
    return found


if __name__ == "__main__":
    main(*sys.argv[1:])
