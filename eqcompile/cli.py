"""The command line: a thin layer over :mod:`eqcompile.api` that only parses options.

Every :class:`~eqcompile.errors.EqcompileError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import signal
import sys
import warnings
from functools import partial
from contextlib import contextmanager
from pathlib import Path

import click
from click.exceptions import NoArgsIsHelpError

from . import api
from .arch.bert import POOLINGS
from .emit.appendix import PACKAGES
from .emit.latex import LEVELS
from .terminal import terminal_text
from .errors import EqcompileError, Notice, TeXError


class DefaultToCompile(click.Group):
    """``eqcompile MODEL ...`` means ``eqcompile compile MODEL ...``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["compile", *args]
        with _usage_errors_in_one_line():
            return super().parse_args(ctx, args)

    def invoke(self, ctx):
        with _usage_errors_in_one_line():  # a subcommand's options are parsed here
            return super().invoke(ctx)


@contextmanager
def _usage_errors_in_one_line():
    """A wrong option or argument is an input error like any other: one line, exit 2 (click prints 4)."""
    try:
        yield
    except NoArgsIsHelpError:  # bare ``eqcompile``: the help is the answer
        raise
    except click.UsageError as e:
        where = f" (see {e.ctx.command_path} --help)" if e.ctx is not None else ""
        _fail(f"error: {e.format_message()}{where}", 2)


def _fail(message: str, code: int) -> None:
    click.echo(f"eqcompile: {terminal_text(' '.join(message.split()))}", err=True)
    sys.exit(code)


def _show_warning(message, category, filename, lineno, file=None, line=None, notices=None) -> None:
    """A warning as one line, its text (which may quote the checkpoint) escaped for the terminal; a
    :class:`~eqcompile.errors.Notice` held in ``notices`` until the command has worked."""
    if issubclass(category, Notice) and notices is not None:
        text = " ".join(str(message).split())
        notices.extend([] if text in notices else [text])
        return
    click.echo(f"eqcompile: warning: {terminal_text(' '.join(str(message).split()))}", err=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # so that half-written temp files are removed on the way out


def _guarded(work, not_the_input: int = 1):
    """Run ``work()``; turn any failure into one line and an exit code, never a traceback.

    Failures that are not the input's fault (TeX, a bug) exit with ``not_the_input``: 1, except
    for ``diff``, where 1 means "different" and every trouble is 2.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    notices: list[str] = []
    try:
        with warnings.catch_warnings():
            warnings.showwarning = partial(_show_warning, notices=notices)
            result = work()
        for notice in notices:
            click.echo(f"eqcompile: {terminal_text(notice)}", err=True)
        return result
    except TeXError as e:  # the generated document or the TeX installation, not the input
        _fail(f"error: {e}", not_the_input)
    except EqcompileError as e:
        _fail(f"error: {e}", 2)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except OSError as e:
        _fail(f"error: {e.strerror or e}: {e.filename or ''}", 2)
    except Exception as e:  # a bug: still one line, and a different exit code
        _fail(f"internal error ({type(e).__name__}: {e}); please report it", not_the_input)


@click.group(cls=DefaultToCompile, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="eqcompile")
def main():
    """Write a trained model down as equations (LaTeX) and as a numpy module.

    \b
    eqcompile MODEL --latex [-o FILE] [--level model|layer|index] [--standalone]
    eqcompile MODEL --python DIR
    eqcompile MODEL --latex --expand      (tiny models: every number written out)
    eqcompile stats MODEL [--json]
    eqcompile MODEL --pdf FILE | --tex FILE [--fragment] | --html FILE
    eqcompile verify MODEL [--seq N]
    eqcompile diff A B [--json | --latex] [-o FILE] [--pdf FILE] [--full-spectrum]
    eqcompile circuits MODEL [--json] [--top K]
    eqcompile MODEL --latex --train | --python DIR --train | --pdf FILE --train   (loss, backward, SGD/AdamW)
    eqcompile train MODEL DATA.txt [--steps N] [--lr X] -o OUT/
    (compile and verify take --activation NAME for an mlp model, --pooling mean for a bert one)

    MODEL is a .safetensors or .gguf file, a model folder, a model.safetensors.index.json of
    shards, or a Hugging Face hub id already in the local cache (nothing is downloaded).
    """


activation_option = click.option(
    "--activation", help="Activation between the Linear layers of an mlp model (relu, tanh, sigmoid, "
    "gelu, silu); overrides config.json's.")
pooling_option = click.option(
    "--pooling", type=click.Choice(POOLINGS),
    help="A bert encoder's output: the last hidden states (none) or their mean over the unpadded tokens (mean).")

form_option = click.option(
    "--form", type=click.Choice(api.FORMS), default="standard", show_default=True,
    help="circuits: the norms' gains and shifts folded into the weights that read them, writers centred "
         "(pre-norm gpt2 and llama-family models); the LaTeX adds each head's W_QK and W_OV.")


@main.command("compile")
@click.argument("model")
@click.option("--latex", "want_latex", is_flag=True, help="Write the model as LaTeX.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="LaTeX output file (default: standard output).")
@click.option("--level", type=click.Choice(LEVELS), default="layer", show_default=True,
              help="model: one composition; layer: every block's equations; index: op definitions.")
@click.option("--standalone", is_flag=True, help="A complete document rather than a fragment.")
@click.option("--unroll", is_flag=True, help="Write every layer out instead of one generic layer (l) "
              "(--latex, and the appendix of --pdf and --tex).")
@click.option("--python", "python_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write DIR/model.py (numpy only) and DIR/weights.safetensors.")
@click.option("--jax", "jax_dir", type=click.Path(file_okay=False, path_type=Path),
              help='Write DIR/model_jax.py (jitted JAX, float32 or --dtype bfloat16; needs pip install '
                   '"eqcompile[jax]") beside DIR/model.py and DIR/weights.safetensors.')
@click.option("--expand", is_flag=True,
              help="The literal equation: every weight substituted, as scalar terms (tiny models). "
                   "With --python, DIR/model.py is then pure Python (math only).")
@click.option("--seq", type=click.IntRange(min=1), help="Sequence length of the expansion (default: the context).")
@click.option("--force", is_flag=True, help="Expand even beyond the size limit.")
@click.option("--dtype", type=click.Choice(["float32", "float64", "bfloat16"]), default="float32", show_default=True,
              help="Weights (and so arithmetic) of the emitted module: float64 for --python, bfloat16 for --jax.")
@click.option("--train", is_flag=True, help="Add training: with --latex (and in --pdf, --tex, --html) the loss, the backward "
              "equations and the SGD/AdamW updates; with --python loss, loss_and_grad, sgd_step and adamw_step in model.py.")
@click.option("--pdf", "pdf_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the appendix (model card, equations, symbols with statistics) as a PDF.")
@click.option("--tex", "tex_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the appendix's LaTeX source.")
@click.option("--fragment", is_flag=True, help="With --tex: an \\input-able appendix, no preamble.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the appendix as one self-contained HTML page (opens offline).")
@click.option("--title", help="The appendix's title.")
@click.option("--author", default="", help="The appendix's author line.")
@click.option("--numbers", is_flag=True, help="Add every weight's values to the appendix (tiny models only).")
@click.option("--trust-tokenizer-pattern", is_flag=True,
              help="Accept a pre-tokenizer regex that is none of the known families' (GPT-2, Llama-3, Qwen2, "
                   "SmolLM2); such a regex from a stranger's file can take exponential time on some texts.")
@activation_option
@pooling_option
@form_option
def compile_command(model, want_latex, output, level, standalone, unroll, python_dir, jax_dir, expand, seq, force,
                    dtype, train, pdf_path, tex_path, fragment, html_path, title, author, numbers,
                    trust_tokenizer_pattern, activation, pooling, form):
    """Compile MODEL to LaTeX, a numpy module, and/or an appendix (PDF, TeX, HTML)."""
    appendix_paths = [p for p in (pdf_path, tex_path, html_path) if p is not None]
    if fragment and tex_path is None:
        _fail("error: --fragment applies to --tex FILE", 2)
    if not want_latex and python_dir is None and jax_dir is None and not appendix_paths:
        _fail("error: choose an output: --latex [-o FILE], --python DIR, --jax DIR, --pdf FILE, --tex FILE or "
              "--html FILE", 2)
    if dtype == "bfloat16" and (python_dir is not None or jax_dir is None):
        _fail("error: --dtype bfloat16 applies to --jax (model.py computes in float32 or float64)", 2)
    if dtype == "float64" and jax_dir is not None:
        _fail("error: --jax computes in float32 or bfloat16, not float64", 2)
    if (title is not None or author or numbers) and not appendix_paths:
        _fail("error: --title, --author and --numbers apply to --pdf, --tex and --html", 2)
    if train and not want_latex and python_dir is None and not appendix_paths:
        _fail("error: --train applies to --latex, --python, --pdf, --tex and --html", 2)
    if train and form != "standard":
        _fail("error: --train differentiates the model as stored; it does not combine with --form circuits", 2)
    options = dict(title=title, author=author, numbers=numbers, train=train)

    def work():
        compiled = api.compile(model, activation=activation, pooling=pooling,
                               trust_tokenizer_pattern=trust_tokenizer_pattern, form=form)
        if seq is not None and seq > compiled.program.max_seq:
            raise EqcompileError(f"--seq {seq} exceeds the context length {compiled.program.max_seq}")
        latex_options = dict(level=level, unroll=unroll, standalone=standalone, expand=expand, seq=seq,
                             force=force, train=train)
        if want_latex:
            if output is None:
                click.echo(compiled.latex(**latex_options), nl=False)
            else:
                compiled.write_latex(output, **latex_options)
                click.echo(f"wrote {output}", err=True)
        if python_dir is not None:
            path = compiled.to_python(python_dir, expand=expand, seq=seq, force=force, dtype=dtype, train=train)
            click.echo(f"wrote {path}" + ("" if expand else f" and {path.with_name('weights.safetensors')}"),
                       err=True)
        if jax_dir is not None:
            click.echo(f"wrote {compiled.to_jax(jax_dir, dtype=dtype)}", err=True)
        if tex_path is not None:
            compiled.tex(tex_path, fragment=fragment, unroll=unroll, **options)
            needs = f" (its preamble needs \\usepackage{{{','.join(PACKAGES)}}})" if fragment else ""
            click.echo(f"wrote {tex_path}{needs}", err=True)
        if pdf_path is not None:
            compiled.pdf(pdf_path, unroll=unroll, **options)
            click.echo(f"wrote {pdf_path}", err=True)
        if html_path is not None:
            compiled.html(html_path, **options)
            click.echo(f"wrote {html_path}", err=True)

    _guarded(work)


@main.command("stats")
@click.argument("model")
@click.option("--seq", type=click.IntRange(min=1), help="Context length n (default: the model's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--train", is_flag=True, help="Also count the backward pass (the loss's gradient and every stage's "
              "backward) and its ratio to the forward.")
@click.option("--mesh", callback=lambda ctx, param, value: _mesh_shape(value),
              help="DATAxMODEL devices, e.g. 8x8: what the JAX module's placement puts on each device.")
@click.option("--dtype", "mesh_dtype", type=click.Choice(["float32", "bfloat16"]), default="float32",
              show_default=True, help="With --mesh: the JAX module's weights and activations.")
def stats_command(model, seq, as_json, train, mesh, mesh_dtype):
    """How big is MODEL's equation? Counted from the shapes alone, in well under a second.

    \b
    parameters: the equation's constants
    operations: scalar operations of the literal equation for n tokens, by kind
    per token: operations to add the n-th token given the earlier ones (a KV cache)
    weights read: bytes of weights one generated token reads (lookup tables: one row)
    literal size: estimated characters of LaTeX and A4 pages if written out
    backward (--train): operations of the backward equations for n tokens, and backward / forward
    with --mesh: weight bytes per device, KV-cache bytes per device per token, the all-reduces
    of each layer per token (payload; a ring sends 2 (M-1)/M of it per device) and outside them
    """
    import dataclasses
    import json

    def work():
        compiled = api.compile(model)
        if seq is not None and seq > compiled.program.max_seq:
            raise EqcompileError(f"--seq {seq} exceeds the context length {compiled.program.max_seq}")
        result = compiled.stats(seq)
        backward = None
        if train:
            from .train.stats import backward_stats

            backward = backward_stats(compiled.program, seq)
        plan = mesh and compiled.mesh_plan(*mesh, dtype_bytes=MESH_DTYPE_BYTES[mesh_dtype])
        if as_json:
            extra = {} if backward is None else {"backward": {**dataclasses.asdict(backward), "ratio": backward.ratio}}
            extra |= {"mesh": dataclasses.asdict(plan)} if plan else {}
            click.echo(json.dumps({**dataclasses.asdict(result), **extra}, indent=2))
            return
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in result.operations.items())
        rows = [
            ("family", compiled.program.family),
            ("parameters", f"{result.parameters:,}"),
            ("context length n", f"{result.seq:,}"),
            ("operations for n tokens", f"{result.operations_total:,}  ({kinds})"),
            ("operations per token at n", f"{result.operations_per_token:,}"),
            ("weights read per token", f"{result.weight_bytes_per_token:,} bytes"),
            ("literal equation (est.)", f"{result.latex_chars:,} LaTeX characters, {result.pages:,.1f} A4 pages"),
        ]
        if backward is not None:
            kinds = ", ".join(f"{kind} {count:,}" for kind, count in backward.operations.items())
            rows += [("backward for n tokens", f"{backward.backward:,}  ({kinds})"),
                     ("backward / forward", f"{backward.backward:,} / {backward.forward:,} = {backward.ratio:.4f}")]
        rows += _mesh_rows(plan, mesh_dtype) if plan else []
        for label, value in rows:
            click.echo(f"{label:<27} {value}")

    _guarded(work)


MESH_DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def _mesh_shape(value: str | None) -> tuple[int, int] | None:
    """``--mesh 8x8`` as (data, model) devices."""
    if value is None:
        return None
    parts = value.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) <= 1 << 20 for p in parts):
        raise click.BadParameter(f"{value!r}: need DATAxMODEL device counts, e.g. 8x8")
    return int(parts[0]), int(parts[1])


def _mesh_rows(plan, dtype: str) -> list[tuple[str, str]]:
    """The --mesh figures as stats rows."""
    replicated = ", ".join(plan.replicated) or "none"
    return [
        ("mesh", f"{plan.data} x {plan.model} (data x model), {plan.data * plan.model} devices, {dtype}"),
        ("weights per device", f"{plan.weight_bytes_per_device:,} bytes of {plan.weight_bytes:,} "
                               f"(replicated for want of a divisor: {replicated})"),
        ("KV cache per device", f"{plan.kv_cache_bytes_per_token:,} bytes per token"),
        ("all-reduces per layer", f"{plan.all_reduces_per_layer} per token: {plan.all_reduce_bytes_per_layer_per_token:,}"
                                  f" bytes ({plan.ring_bytes_per_layer_per_token:,} sent per device in a ring)"),
        ("all-reduces outside layers", f"{plan.all_reduces_outside_layers} per token: "
                                       f"{plan.all_reduce_bytes_outside_layers_per_token:,} bytes"),
    ]


@main.command("train")
@click.argument("model")
@click.argument("data", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--steps", type=click.IntRange(min=1), default=50, show_default=True, help="AdamW steps.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True,
              help="Learning rate.")
@click.option("--weight-decay", type=click.FloatRange(min=0), default=0.01, show_default=True,
              help="AdamW's decoupled weight decay.")
@click.option("-o", "--output", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the trained checkpoint (model.safetensors, config.json, tokenizer files).")
def train_command(model, data, steps, lr, weight_decay, output):
    """Fine-tune MODEL on the text file DATA with the emitted adamw_step; write the result to OUTPUT.

    The text is tokenized by the model's own tokenizer and cut into windows of the context length;
    step k trains on window k. Prints the loss of each step and, at the end, the loss over the whole text.
    """
    from .train.finetune import fine_tune, progress_printer

    def work():
        compiled = api.compile(model)
        try:
            text = data.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise EqcompileError(f"{data} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        result = fine_tune(compiled, text, steps, lr, output, weight_decay, progress_printer(steps))
        click.echo(f"loss over the whole text: {result.before:.4f} before, {result.after:.4f} after")
        click.echo(f"wrote {output}", err=True)

    _guarded(work)


@main.command("circuits")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="How many of each circuit's largest singular values to list.")
def circuits_command(model, as_json, top):
    """Each attention head as its QK circuit W_Q^h W_K^hᵀ and OV circuit W_V^h W_O^h (Elhage et al. 2021).

    \b
    per head: Frobenius norm, largest singular values and numerical rank of both circuits
      (rank: singular values above σ_1 · d · 2^-23), and the OV circuit's copying score
      Σλ/Σ|λ| over the eigenvalues of W_E W_OV W_U (1: every eigenvalue positive)
    per pair of heads in layers l1 < l2: Q-, K- and V-composition scores,
      ‖W_OV^{h1} W_QK^{h2}‖, ‖W_OV^{h1} W_QK^{h2}ᵀ‖, ‖W_OV^{h1} W_OV^{h2}‖ over the product of the norms
    The weights as stored (norm gains and biases not folded in); layers and heads 0-based.
    """
    import json

    def work():
        result = api.compile(model).circuits(top)
        click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.table())

    _guarded(work)


@main.command("verify")
@click.argument("model")
@click.option("--seq", "seqs", type=click.IntRange(min=1), multiple=True,
              help="Sequence length to test (repeatable; default 1, 7 and the full context up to 128).")
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@click.option("--exact", is_flag=True,
              help="Compare every implementation with the equation evaluated in arbitrary precision.")
@click.option("--digits", type=click.IntRange(min=20), default=40, show_default=True,
              help="Decimal digits of the exact evaluation.")
@click.option("--json", "as_json", is_flag=True, help="With --exact: machine-readable output.")
@click.option("--force", is_flag=True, help="With --exact: run even when the estimate is long.")
@click.option("--backend", type=click.Choice(["numpy", "jax"]), default="numpy", show_default=True,
              help="The emitted module to check: model.py (numpy) or model_jax.py (JAX).")
@activation_option
@pooling_option
@form_option
def verify_command(model, seqs, seed, exact, digits, as_json, force, backend, activation, pooling, form):
    """Run the emitted module and the reference on the same random inputs; compare the outputs.

    The reference is transformers (torch's nn.Sequential for an mlp).
    Exits 1 when max |error| > 1e-4 (times L/12 for L > 12 blocks: float32 rounding grows with
    depth) or max |error| / max |reference| > 1e-5.

    With --exact: the equation is evaluated with mpmath (--digits), the checkpoint's weights taken
    as exact numbers, and each implementation (numpy float32 and float64, torch float32 and
    bfloat16) is measured against it: max absolute and relative error, agreeing bits, whether
    its argmax agrees, and whether three runs are bit-identical. Default --seq 16.
    With --form circuits the module checked is the folded one; with --exact its first row
    ("circuits exact") is the folded equation evaluated exactly against the original one.
    """
    from .verify import REL_TOLERANCE, absolute_tolerance, verify

    def work():
        compiled = api.compile(model, activation=activation, pooling=pooling, form=form)
        if exact and backend != "numpy":
            raise EqcompileError("--exact measures the numpy and torch implementations: drop --backend")
        if exact:
            return _exact_report(compiled, min(seqs[0] if seqs else 16, compiled.program.max_seq),
                                 digits, seed, as_json, force)
        longest = min(compiled.program.max_seq, 128)
        lengths = sorted(set(seqs or (1, min(7, longest), longest)))
        if max(lengths) > compiled.program.max_seq:
            raise EqcompileError(f"--seq {max(lengths)} exceeds the context length {compiled.program.max_seq}")
        results = verify(compiled, lengths, seed, backend=backend)
        click.echo(f"{'seq':>5} {'max abs err':>12} {'max rel err':>12}  "
                   f"(tolerance {absolute_tolerance(compiled):g} abs, {REL_TOLERANCE:g} rel)")
        for r in results:
            click.echo(f"{r.seq:>5} {r.max_abs:>12.3e} {r.max_rel:>12.3e}  {'ok' if r.ok else 'FAIL'}")
        return all(r.ok for r in results)

    if not _guarded(work):
        _fail("verification failed: the emitted module differs from the reference beyond tolerance", 1)


def _exact_report(compiled, seq, digits, seed, as_json, force) -> bool:
    import dataclasses
    import json

    from .exact import deviations

    rows = deviations(compiled, seq, digits, seed, force)
    if as_json:
        click.echo(json.dumps({"seq": seq, "digits": digits,
                               "implementations": [dataclasses.asdict(r) for r in rows]}, indent=2))
        return True
    click.echo(f"exact: {digits} digits, seq {seq}")
    click.echo(f"{'implementation':<16} {'max abs err':>12} {'max rel err':>12} {'bits':>6} {'argmax':>7} deterministic")
    for r in rows:
        click.echo(f"{r.implementation:<16} {r.max_abs:>12.3e} {r.max_rel:>12.3e} {r.bits:>6.1f} "
                   f"{r.argmax_agrees:>7.0%} {'yes' if r.deterministic else 'no'}")
    return True


@main.command("diff")
@click.argument("before", metavar="A")
@click.argument("after", metavar="B")
@click.option("--json", "as_json", is_flag=True, help="Write the report as JSON.")
@click.option("--latex", "as_latex", is_flag=True, help="Write the report as a LaTeX document.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Report file (default: standard output).")
@click.option("--pdf", "pdf_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also build the LaTeX report as this PDF (needs latexmk and pdflatex).")
@click.option("--full-spectrum", is_flag=True,
              help="Whole spectra up to a side of 1024 and a float64 top-64 above (default: whole up to 256, "
                   "a float32 top-32 above; tens of times faster).")
def diff_command(before, after, as_json, as_latex, output, pdf_path, full_spectrum):
    """Compare two checkpoints: which equations changed, and how far and in what form each weight moved.

    Exits 0 when A and B are identical, 1 when they differ, 2 on any trouble (like diff).
    """
    from .diff import FAST, FULL, compare, render
    from .emit.files import write_bytes, write_text
    from .emit.pdf import build_pdf

    if as_json and as_latex:
        _fail("error: choose one of --json and --latex", 2)

    def work():
        result = compare(before, after, FULL if full_spectrum else FAST)
        report = render.json_text(result) if as_json else render.latex(result) if as_latex else render.text(result)
        if output is None:
            click.echo(report, nl=False)
        else:
            write_text(output, report)
            click.echo(f"wrote {output}", err=True)
        if pdf_path is not None:
            write_bytes(pdf_path, build_pdf(render.latex(result)).pdf)
            click.echo(f"wrote {pdf_path}", err=True)
        return result.identical

    sys.exit(0 if _guarded(work, not_the_input=2) else 1)
