"""Hostile config.json and shard indexes: special files, sizes, wrong kinds, terminal escapes.

Each finding of issue 20 that concerns these files has a test here that reproduces it; the fuzz
tests run generated configs and indexes through the CLI. Every refusal must be exit 2 with one
line, within 10 s (and, where a size is the attack, 1 GB), with no raw control character.
"""

from __future__ import annotations

import json
import os
import re
import resource
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqcompile.arch import bert, gpt2, llama
from eqcompile.cli import main
from eqcompile.errors import ConfigError
from eqcompile.arch import header_only
from eqcompile.load.sparse import write_sparse_checkpoint

from conftest import ROOT

# EQCOMPILE_FUZZ_EXAMPLES=20000 python -m pytest tests/test_hostile_config.py -k fuzz  runs a longer search
FUZZ = settings(max_examples=int(os.environ.get("EQCOMPILE_FUZZ_EXAMPLES", "15")), deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f]")  # anything but the newline that ends a line
SECONDS, MEGABYTES = 10, 1024

GPT2 = {"model_type": "gpt2", "vocab_size": 8, "n_positions": 4, "n_embd": 4, "n_layer": 1, "n_head": 1}
LLAMA = {"model_type": "llama", "vocab_size": 8, "hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1,
         "num_attention_heads": 1, "num_key_value_heads": 1, "max_position_embeddings": 8, "rms_norm_eps": 1e-5}
MISTRAL = {**LLAMA, "model_type": "mistral", "sliding_window": 4}
QWEN2 = {**LLAMA, "model_type": "qwen2", "use_sliding_window": True, "sliding_window": 4, "max_window_layers": 0,
         "layer_types": ["sliding_attention"]}
BERT = {"model_type": "bert", "vocab_size": 8, "hidden_size": 4, "num_hidden_layers": 1, "num_attention_heads": 1,
        "intermediate_size": 8, "max_position_embeddings": 8}
CONFIGS = {"gpt2": GPT2, "llama": LLAMA, "mistral": MISTRAL, "qwen2": QWEN2, "bert": BERT}


def make_model(folder: Path, config: dict) -> Path:
    """A tiny header-only checkpoint (its data a hole of zeros) with ``config`` as its config.json."""
    if config["model_type"] == "bert":
        tensors = bert._expected_tensors(bert.read_config(_bare(config))[0], "")
        return write_sparse_checkpoint(folder, tensors, config)
    return header_only(folder, config)


def _bare(config: dict):
    from eqcompile.load import Checkpoint

    return Checkpoint("", [], {}, config)


def invoke(*args) -> tuple[int, str, str, float]:
    """The CLI in this process: exit code, stdout, stderr, seconds."""
    start = time.perf_counter()
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr, time.perf_counter() - start


def assert_refused(*args, mentions: str = "") -> str:
    """Exit 2, one line on stderr naming ``mentions``, nothing on stdout, no raw control character."""
    code, out, err, seconds = invoke(*args)
    assert code == 2, (code, out, err)
    assert out == "" and err.startswith("eqcompile: error:") and err.count("\n") == 1, err
    assert not RAW_CONTROL.search(err), err
    assert mentions in err, err
    assert seconds < SECONDS
    return err


# the CLI's own time, measured inside the child: starting Python is not the input's doing; and the
# child's own peak memory (VmHWM of its image after exec: ru_maxrss would count the forked copy of
# this test process, over 1 GB late in a full run)
CHILD = ("import atexit, re, sys, time; from eqcompile.cli import main; start = time.perf_counter(); "
         "atexit.register(lambda: print(time.perf_counter() - start, "
         "re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1), file=sys.__stdout__)); "
         "main(sys.argv[1:], prog_name='eqcompile')")


def _four_gigabytes() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))


def run_bounded(*args) -> tuple[int, str, float, float]:
    """The CLI in a fresh process: exit code, stderr, seconds, peak memory in MB.

    The child may use 4 GB of address space at most, so that a regression fails here instead of
    taking the machine's memory.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen([sys.executable, "-c", CHILD, *map(str, args)], cwd=ROOT, stdout=out, stderr=err,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=_four_gigabytes)
        process.wait()
        out.seek(0), err.seek(0)
        seconds, kilobytes = out.read().decode().split()[-2:]
        return process.returncode, err.read().decode("utf-8", "replace"), float(seconds), int(kilobytes) / 1024


def assert_refused_within_bounds(*args, mentions: str = "") -> None:
    code, err, seconds, megabytes = run_bounded(*args)
    assert code == 2 and err.startswith("eqcompile: error:") and err.count("\n") == 1, (code, err)
    assert mentions in err and not RAW_CONTROL.search(err), err
    assert seconds < SECONDS and megabytes < MEGABYTES, (seconds, megabytes)


def command_line(command: str, folder: Path, out: Path) -> list:
    """``--latex``, ``stats`` or ``--python`` on ``folder``, as the CLI takes it."""
    return {"--latex": [folder, "--latex"], "stats": ["stats", folder], "--python": [folder, "--python", out]}[command]


@pytest.fixture
def gpt2_folder(tmp_path) -> Path:
    return make_model(tmp_path / "m", GPT2)


def write_config(folder: Path, config) -> None:
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))


# ------------------------------------------------------------------ (1) config.json, read bounded

def test_config_linked_to_dev_zero_is_refused_unread(gpt2_folder):
    (gpt2_folder / "config.json").unlink()
    (gpt2_folder / "config.json").symlink_to("/dev/zero")  # before: read until memory ran out
    assert_refused_within_bounds(gpt2_folder, "--latex", mentions="config.json: not a regular file")


def test_config_that_is_a_fifo_is_refused_without_waiting(gpt2_folder):
    (gpt2_folder / "config.json").unlink()
    os.mkfifo(gpt2_folder / "config.json")  # before: hung, waiting for a writer
    assert_refused("stats", gpt2_folder, mentions="config.json: not a regular file")


def test_a_200_mb_config_is_refused_before_reading(gpt2_folder):
    with open(gpt2_folder / "config.json", "r+b") as f:  # before: 4.5 s and 1.1 GB to parse
        f.truncate(200 * 1024 * 1024)  # sparse: no disk space, and never read
    assert_refused_within_bounds(gpt2_folder, "--latex", mentions="config.json: 209,715,200 bytes, over the")


@pytest.mark.parametrize("command", ["--latex", "stats", "--python"])
def test_a_config_nested_thousands_deep_is_refused(gpt2_folder, tmp_path, command):
    write_config(gpt2_folder, json.dumps(GPT2)[:-1] + ', "x": ' + "[" * 5000 + "]" * 5000 + "}")
    assert_refused(*command_line(command, gpt2_folder, tmp_path / "out"),  # before: RecursionError, exit 1
                   mentions="config.json: JSON nested 5001 levels deep")


def test_a_5000_digit_integer_in_the_config_is_refused(gpt2_folder):
    write_config(gpt2_folder, json.dumps(GPT2).replace('"n_embd": 4', '"n_embd": 1' + "0" * 4999))
    assert_refused(gpt2_folder, "--latex", mentions="config.json: n_embd is an integer of 5000 digits")


@pytest.mark.parametrize("command", ["--latex", "--html"])
def test_a_lone_surrogate_in_the_config_is_refused(gpt2_folder, tmp_path, command):
    write_config(gpt2_folder, json.dumps({**GPT2, "architectures": ["GPT2\\ud800"]}).replace("\\\\", "\\"))
    assert_refused(gpt2_folder, command, *([tmp_path / "m.html"] if command == "--html" else []),
                   mentions="config.json: architectures[0] holds a lone surrogate (\\ud800)")  # was exit 1 (--html)
    assert not (tmp_path / "m.html").exists()


def test_a_dangling_config_link_is_an_error_not_a_missing_config(gpt2_folder):
    (gpt2_folder / "config.json").unlink()
    (gpt2_folder / "config.json").symlink_to(gpt2_folder / "gone.json")
    assert_refused(gpt2_folder, "--latex", mentions="config.json: cannot read")


def test_a_config_that_is_not_an_object_is_refused(gpt2_folder):
    write_config(gpt2_folder, "[1, 2]")
    assert_refused(gpt2_folder, "--latex", mentions="config.json: must hold a JSON object")


# ---------------------------------------------------------- (2) each key of the kind it must be

WRONG_KINDS = {  # (family, key, value, what the message names): each was exit 1 or a silent oddity
    "gpt2 activation_function as a list": ("gpt2", "activation_function", ["gelu"], "activation_function"),
    "gpt2 activation_function as an object": ("gpt2", "activation_function", {"a": 1}, "activation_function"),
    "gpt2 n_embd as a boolean": ("gpt2", "n_embd", True, "n_embd must be an integer"),
    "gpt2 epsilon as a string": ("gpt2", "layer_norm_epsilon", "1e-5", "layer_norm_epsilon must be a number"),
    "gpt2 epsilon as a boolean": ("gpt2", "layer_norm_epsilon", False, "layer_norm_epsilon must be a number"),
    "gpt2 epsilon infinite (1e400)": ("gpt2", "layer_norm_epsilon", "1e400", "layer_norm_epsilon must be a number"),
    "gpt2 epsilon NaN": ("gpt2", "layer_norm_epsilon", "NaN", "layer_norm_epsilon must be a number"),
    "gpt2 flag as a list": ("gpt2", "scale_attn_weights", [True], "scale_attn_weights must be true or false"),
    "llama hidden_act as a list": ("llama", "hidden_act", ["silu"], "hidden_act"),
    "llama rope_theta as a boolean": ("llama", "rope_theta", True, "rope_theta must be a number"),
    "llama rope_theta infinite": ("llama", "rope_theta", "1e999", "rope_theta must be a number"),
    "llama rope_scaling as a list": ("llama", "rope_scaling", [1], "rope_parameters must be an object"),
    "llama rope type as a list": ("llama", "rope_scaling", {"rope_type": ["linear"], "factor": 2.0}, "rope_type"),
    "llama rope factor as a string": ("llama", "rope_scaling", {"rope_type": "linear", "factor": "2"}, "factor"),
    "llama partial_rotary_factor as a list": ("llama", "partial_rotary_factor", [0.5] * 1000,
                                              "partial_rotary_factor=[0.5, 0.5, 0.5, 0.5, 0.5, 0.5, ...]"),
    "qwen2 layer_types 5": ("qwen2", "layer_types", 5, "layer_types must be a list of 1 names"),
    "qwen2 layer_types of numbers": ("qwen2", "layer_types", [1], "layer_types must be a list of 1 names"),
    "qwen2 layer_types too long": ("qwen2", "layer_types", ["sliding_attention"] * 2, "layer_types"),
    "qwen2 layer_types unknown kind": ("qwen2", "layer_types", ["chunked_attention"], "layer_types"),
    "qwen2 max_window_layers as a float": ("qwen2", "max_window_layers", 0.5, "max_window_layers must be"),
    "mistral sliding_window as a string": ("mistral", "sliding_window", "4", "sliding_window must be an integer"),
    "bert hidden_act as a list": ("bert", "hidden_act", ["gelu"], "hidden_act"),
    "bert position_embedding_type as an object": ("bert", "position_embedding_type", {}, "position_embedding_type"),
}


@pytest.mark.parametrize("name", WRONG_KINDS)
def test_a_value_of_the_wrong_kind_is_one_line_naming_the_key(tmp_path, name):
    family, key, value, mentions = WRONG_KINDS[name]
    folder = make_model(tmp_path / "m", CONFIGS[family])
    text = json.dumps({**CONFIGS[family], key: value})
    if isinstance(value, str) and value in ("1e400", "1e999", "NaN"):  # JSON numbers Python reads as inf, nan
        text = text.replace(f'"{value}"', value)
    write_config(folder, text)
    assert_refused(folder, "--latex", mentions=mentions)


@pytest.mark.parametrize("family, key", [("gpt2", "layer_norm_epsilon"), ("llama", "rope_theta"),
                                         ("llama", "rms_norm_eps"), ("bert", "layer_norm_eps")])
def test_a_400_digit_integer_is_a_config_error_even_past_the_reader(family, key):
    """Configs also come from GGUF metadata and the API: ConfigReader itself refuses (was OverflowError)."""
    with pytest.raises(ConfigError, match=f"{key} must be a number in .*got 10000000000"):
        if family == "bert":
            bert.read_config(_bare({**BERT, key: 10**400}))
        else:
            (gpt2 if family == "gpt2" else llama).config_from_dict({**CONFIGS[family], key: 10**400})


def test_a_400_digit_rope_factor_is_a_config_error():
    with pytest.raises(ConfigError, match="factor must be a number"):  # was OverflowError
        llama.config_from_dict({**LLAMA, "rope_scaling": {"rope_type": "linear", "factor": 10**400}})


def test_mlp_activation_as_a_list(tmp_path):
    folder = write_sparse_checkpoint(tmp_path / "m", [("0.weight", (4, 2)), ("2.weight", (2, 4))],
                                     {"model_type": "mlp", "activation": ["relu"]})
    assert_refused(folder, "--latex", mentions="unsupported activation ['relu']")


# ------------------------------------------------------ (3) sizes checked against the tensors

def test_a_billion_layers_in_a_mistral_config_fails_at_once(tmp_path):
    folder = make_model(tmp_path / "m", MISTRAL)  # before: 20 s and 7.9 GB, then "missing tensor"
    write_config(folder, {**MISTRAL, "num_hidden_layers": 1_000_000_000})
    assert_refused_within_bounds(folder, "--latex", mentions="num_hidden_layers is 1,000,000,000, but the "
                                 "checkpoint has no tensor 'model.layers.999999999.input_layernorm.weight'")


@pytest.mark.parametrize("family, key", [("gpt2", "n_layer"), ("qwen2", "num_hidden_layers"),
                                         ("bert", "num_hidden_layers")])
def test_a_layer_count_beyond_the_tensors_is_refused_first(tmp_path, family, key):
    folder = make_model(tmp_path / "m", CONFIGS[family])
    config = {**CONFIGS[family], key: 10**39}
    config.pop("layer_types", None)
    write_config(folder, config)
    assert_refused("stats", folder, mentions=f"{key} is {10**39:,}")


def index_folder(folder: Path, weight_map) -> Path:
    """A GPT-2 checkpoint saved as one shard plus ``model.safetensors.index.json`` naming ``weight_map``."""
    make_model(folder, GPT2)
    (folder / "model.safetensors").rename(folder / "shard-1.safetensors")
    index = weight_map if isinstance(weight_map, str) else json.dumps({"metadata": {}, "weight_map": weight_map})
    (folder / "model.safetensors.index.json").write_text(index)
    return folder


def test_twenty_thousand_distinct_missing_shards(tmp_path):
    names = {f"t{i}": f"shard-{i}-missing.safetensors" for i in range(20_000)}  # before: 22 s
    folder = index_folder(tmp_path / "m", names)
    assert_refused(folder, "--latex", mentions="missing file")


def test_an_empty_weight_map(tmp_path):
    assert_refused(index_folder(tmp_path / "m", {}), "--latex", mentions="no weight_map object")  # was IndexError


@pytest.mark.parametrize("text, mentions", [
    ('{"weight_map": ' + "[" * 3000 + "]" * 3000 + "}", "JSON nested 3001 levels deep"),
    ('{"weight_map": {"wte.weight": 1' + "0" * 5000 + "}}", "an integer of 5001 digits"),
    ('{"weight_map": {"wte.weight": "shard-1.safetensors\\udc80"}}', "lone surrogate"),
    ('{"weight_map": {"wte.weight": 5}}', "weight_map['wte.weight'] must be a shard's file name, got 5"),
    ('{"weight_map": {"wte.weight": ["shard-1.safetensors"]}}', "must be a shard's file name"),
    ('{"weight_map": {"wte.weight": ""}}', "must be a shard's file name"),
    ('{"weight_map": "shard-1.safetensors"}', "no weight_map object"),
    ("[]", "no weight_map object"),
])
def test_an_index_of_the_wrong_shape(tmp_path, text, mentions):
    assert_refused(index_folder(tmp_path / "m", text), "--latex", mentions=mentions)


@pytest.mark.parametrize("special", ["/dev/zero", "fifo"])
def test_an_index_that_is_a_special_file(tmp_path, special):
    folder = index_folder(tmp_path / "m", {})
    (folder / "model.safetensors.index.json").unlink()
    if special == "fifo":
        os.mkfifo(folder / "model.safetensors.index.json")
    else:
        (folder / "model.safetensors.index.json").symlink_to(special)
    assert_refused(folder, "--latex", mentions="model.safetensors.index.json: not a regular file")


# ------------------------------------------------------------------- (4) terminal escapes

OWNED = "\x1b]0;OWNED\x07"  # retitles the terminal when printed raw


def test_a_shard_name_with_an_escape_is_shown_escaped(tmp_path):
    folder = index_folder(tmp_path / "m", {"wte.weight": f"{OWNED}.safetensors"})
    err = assert_refused(folder, "--latex", mentions="\\x1b]0;OWNED\\x07.safetensors")
    assert "\x1b" not in err and "\x07" not in err  # before: the raw sequence reached stderr


def test_a_newline_in_a_name_cannot_forge_a_line(tmp_path):
    folder = index_folder(tmp_path / "m", {"wte.weight": "a\x1b[1A\neqcompile: all good.safetensors"})
    err = assert_refused("stats", folder)
    assert err.count("\n") == 1 and "\\x1b[1A" in err


def test_a_warning_quoting_the_tokenizer_is_one_escaped_line(tmp_path, gpt2_folder):
    (gpt2_folder / "tokenizer.json").write_text(json.dumps({"model": {"type": f"X{OWNED}\nwarning: forged"}}))
    code, _, err, _ = invoke(gpt2_folder, "--python", tmp_path / "py")
    assert code in (0, 2), err  # a warning (model.py without encode/decode) or a refusal, never a crash
    assert not RAW_CONTROL.search(err), err
    assert not any(line.startswith("warning: forged") for line in err.splitlines()), err


def test_diff_shows_tensor_names_escaped(tmp_path):
    before = make_model(tmp_path / "a", GPT2)
    after = tmp_path / "b"
    tensors = list(gpt2.expected_tensors(gpt2.config_from_dict(GPT2)))
    name = f"extra{OWNED}\x9b2J\nResult: identical"  # \x9b: the one-byte CSI
    write_sparse_checkpoint(after, [*tensors, (name, (1,))], GPT2)
    code, out, err, _ = invoke("diff", before, after)  # before: the name printed raw
    assert code == 1, err
    assert "extra\\x1b]0;OWNED\\x07\\x9b2J\\nResult: identical" in out
    assert not RAW_CONTROL.search(out), out
    assert not any(line.startswith("Result: identical") for line in out.splitlines()), out
    code, out, err, _ = invoke("diff", "--json", before, after)
    assert code == 1 and not RAW_CONTROL.search(out), out
    assert json.loads(out)["structure"]["tensors"]["added"] == [name]


# -------------------------------------------------------------------------------- (5) minor

@pytest.mark.parametrize("args", [["--bogus"], ["stats"], ["m", "--level", "nope", "--latex"], ["diff", "a"]])
def test_usage_errors_are_one_line(args):
    code, out, err, _ = invoke(*args)  # before: Usage, Try, a blank line and Error: 4 lines
    assert code == 2 and out == "" and err.startswith("eqcompile: error:") and err.count("\n") == 1, err
    assert "--help" in err


def test_a_linked_shard_does_not_quote_its_targets_bytes(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 10)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(secret)
    err = assert_refused(folder, "--latex", mentions="does not begin with a header length")
    assert "symbolic link" in err
    assert str(struct.unpack("<Q", b"root:x:0")[0]) not in err  # before: "header length 3472328296227680882"


# --------------------------------------------------------------------------------- (6) fuzzing

def hostile_json() -> st.SearchStrategy[str]:
    """JSON text of every kind, and the kinds that used to crash: deep nesting, huge integers, surrogates."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                        st.text(max_size=12))
    values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                           st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                          max_leaves=8).map(json.dumps)
    return st.one_of(
        values,
        st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0.0", '"\\u001b]0;x\\u0007\\n"', '"\\ud800"',
                         '"\\udfff x"', '["\\udc00"]', "1" + "0" * 40, "1" + "0" * 5000, "1e-400"]),
        st.integers(1, 6000).map(lambda depth: "[" * depth + "]" * depth),
        st.integers(1, 6000).map(lambda depth: '{"a": ' * depth + "1" + "}" * depth),
    )


KEYS = sorted({key for config in CONFIGS.values() for key in config} | {
    "activation_function", "hidden_act", "rope_theta", "rope_scaling", "rope_parameters", "partial_rotary_factor",
    "head_dim", "tie_word_embeddings", "attention_bias", "mlp_bias", "n_inner", "layer_norm_epsilon",
    "layer_norm_eps", "type_vocab_size", "pooling", "is_decoder", "add_cross_attention", "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx", "position_embedding_type", "activation", "torch_dtype", "architectures"})
COMMANDS = st.sampled_from(["--latex", "stats", "--python"])


def assert_clean(code: int, out: str, err: str, seconds: float) -> None:
    """Exit 0, or exit 2 with one line; never an internal error, a raw control character or 10 s."""
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("eqcompile: error:") and err.count("\n") == 1, err
    assert not RAW_CONTROL.search(err) and "internal error" not in err, err
    assert seconds < SECONDS


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return {name: make_model(tmp_path_factory.mktemp(name) / "m", config) for name, config in CONFIGS.items()}


@FUZZ
@given(family=st.sampled_from(sorted(CONFIGS)), edits=st.dictionaries(st.sampled_from(KEYS), hostile_json(),
                                                                      min_size=1, max_size=3),
       command=COMMANDS)
def test_fuzz_config_values(models, tmp_path, family, edits, command):
    folder = models[family]
    config = {key: json.dumps(value) for key, value in CONFIGS[family].items()} | edits
    write_config(folder, "{" + ", ".join(f"{json.dumps(key)}: {text}" for key, text in config.items()) + "}")
    assert_clean(*invoke(*command_line(command, folder, tmp_path / "out")))


@FUZZ
@given(text=hostile_json(), command=COMMANDS)
def test_fuzz_whole_config(models, tmp_path, text, command):
    folder = models["gpt2"]
    write_config(folder, text)
    assert_clean(*invoke(*command_line(command, folder, tmp_path / "out")))


@FUZZ
@given(weight_map=st.one_of(
    hostile_json(),
    st.dictionaries(st.sampled_from(["wte.weight", "wpe.weight", "h.0.ln_1.weight", "x\x1b\n"]),
                    st.one_of(st.sampled_from(["shard-1.safetensors", "missing.safetensors", "../x.safetensors",
                                               "/etc/passwd", "sub/../shard-1.safetensors", ".", "\x1b[2J"]),
                              st.text(max_size=8)).map(json.dumps), max_size=4)
    .map(lambda entries: "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in entries.items()) + "}")),
    command=COMMANDS)
def test_fuzz_shard_index(tmp_path, weight_map, command):
    folder = tmp_path / "m"
    if not folder.exists():
        index_folder(folder, {})
    (folder / "model.safetensors.index.json").write_text('{"metadata": {}, "weight_map": ' + weight_map + "}")
    assert_clean(*invoke(*command_line(command, folder, tmp_path / "out")))
