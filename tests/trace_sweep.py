"""The tracer's sweep over transformers' causal language models (README "Supported models").

For every model type in transformers' ``MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`` (or those named on the
command line), a tiny random checkpoint is saved by transformers, compiled through the tracer,
printed at every LaTeX level, emitted as the numpy module and compared with transformers' logits at
1, 5 and 16 tokens (1e-4 absolute, 1e-5 relative to the logits' scale). Each model runs in a
subprocess of its own, under a time limit, and prints one line: ``works``, ``refused: <the one-line
reason eqcompile gave>``, ``differs`` (a wrong number: a bug) or ``fails: <what raised>`` (a bug,
or a config the tiny sizes below do not fit).

    PYTHONPATH=. python tests/trace_sweep.py [model_type ...] > sweep.txt
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

TIMEOUT = 600  # seconds per model type
SMALL = dict(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             intermediate_size=40, max_position_embeddings=32, initializer_range=0.3, bos_token_id=None,
             eos_token_id=None, pad_token_id=None, use_cache=False)
MOE = dict(num_experts=4, num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
           shared_expert_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1)
SETTINGS = {  # model_type -> settings over SMALL (and MOE where the config has those keys)
    "mpt": dict(d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=32),
    "gpt_bigcode": dict(n_inner=40, n_positions=32),
    "codegen": dict(n_positions=32, rotary_dim=4, n_ctx=32),
    "gptj": dict(rotary_dim=4),
    "opt": dict(ffn_dim=40, word_embed_proj_dim=32),
    "xglm": dict(ffn_dim=40, d_model=32, attention_heads=4),
    "dbrx": dict(d_model=32, n_heads=4, n_layers=2, max_seq_len=32,
                 attn_config=dict(kv_n_heads=2), ffn_config=dict(ffn_hidden_size=16, moe_num_experts=4, moe_top_k=2)),
    "deepseek_v3": dict(q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                        n_group=1, topk_group=1),
    "deepseek_v2": dict(q_lora_rank=16, kv_lora_rank=8, qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8,
                        n_group=1, topk_group=1),
    "nemotron": dict(head_dim=8),
    "gpt_oss": dict(head_dim=8, num_local_experts=4, num_experts_per_tok=2, sliding_window=4),
}
NOT_DECODERS = {  # encoders and encoder-decoders transformers also maps as causal LMs: out of scope
    "bart", "bert", "bert-generation", "big_bird", "bigbird_pegasus", "blenderbot", "blenderbot-small", "camembert",
    "data2vec-text", "electra", "ernie", "marian", "mbart", "megatron-bert", "mvp", "pegasus", "plbart",
    "prophetnet", "rembert", "roberta", "roberta-prelayernorm", "roc_bert", "roformer", "trocr", "whisper", "xlm",
    "xlm-roberta", "xlm-roberta-xl", "xlnet", "xmod", "reformer", "musicgen", "musicgen_melody", "git", "moshi",
    "modernbert-decoder",
}

CHILD = r'''
import sys, json, numpy as np, torch, transformers
from pathlib import Path
import eqcompile
from eqcompile.emit.latex import LEVELS
from eqcompile.emit.python import import_module
from eqcompile.errors import EqcompileError
from eqcompile.verify import compare
transformers.logging.set_verbosity_error()
model_type, settings, folder = sys.argv[1], json.loads(sys.argv[2]), Path(sys.argv[3])
try:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(model_type, **settings)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
    model.save_pretrained(folder)
except Exception as e:
    print("fails: transformers cannot make it:", (str(e).splitlines() or [type(e).__name__])[0][:160]); sys.exit()
try:
    compiled = eqcompile.compile(folder)
    for level in LEVELS:
        compiled.latex(level=level)
    module = import_module(compiled.to_python(folder.parent / "out"), "swept_" + model_type.replace("-", "_"))
except EqcompileError as e:
    print("refused:", str(e).split("others through the tracer): ")[-1][:300]); sys.exit()
reference = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
rng, worst = np.random.default_rng(0), 0.0
for length in (1, 5, 16):
    tokens = rng.integers(0, 61, length)
    with torch.no_grad():
        expected = reference(torch.as_tensor(tokens)[None], use_cache=False).logits[0].numpy()
    max_abs, max_rel, ok = compare(module.forward(tokens), expected, 1e-4, 1e-5)
    worst = max(worst, max_rel)
    if not ok:
        print(f"differs: {max_rel:.1e} relative at {length} tokens"); sys.exit()
print(f"works ({worst:.1e} relative)")
'''


def settings_for(model_type: str) -> dict:
    """SMALL, the MoE sizes the config knows, and the type's own settings."""
    import transformers

    keys = set(transformers.AutoConfig.for_model(model_type).to_dict())
    return {**SMALL, **{k: v for k, v in MOE.items() if k in keys}, **SETTINGS.get(model_type, {})}


def sweep_one(model_type: str) -> str:
    import json

    try:
        settings = settings_for(model_type)
    except Exception as e:
        return f"fails: no config: {(str(e).splitlines() or [type(e).__name__])[0][:120]}"
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run([sys.executable, "-c", CHILD, model_type, json.dumps(settings), str(Path(tmp) / "ckpt")],
                                  capture_output=True, text=True, timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            return f"fails: over {TIMEOUT} s"
    lines = done.stdout.strip().splitlines()
    if lines:
        return lines[-1]
    return "fails: " + ((done.stderr.strip().splitlines() or ["no output"])[-1][:200])


def main(names: list[str]):
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    for model_type in names or [t for t in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES if t not in NOT_DECODERS]:
        print(f"{model_type}: {sweep_one(model_type)}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
