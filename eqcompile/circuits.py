"""The circuit view in numbers: each head's QK and OV circuits, their copying score, and how heads compose.

Elhage et al., "A Mathematical Framework for Transformer Circuits" (2021), in the ``X W`` orientation of
the equations (a token is a row): head h of a layer reads its query columns
``W_Q^h = W_Q[:, h·d_head:(h+1)·d_head]``, the columns of the key/value head g(h) = h // (n_head /
n_kv_head) it shares (grouped-query attention), and writes through the matching rows of ``W_O``:

    W_QK^h = W_Q^h W_K^gᵀ   (d × d; attention scores are X W_QK Xᵀ / √d_head, the scale left out)
    W_OV^h = W_V^g W_O^h    (d × d; the head adds A X W_OV to the stream)

Every figure comes from the thin factors, never from a d × d product: with W_Q^h = U_q R_q and
W_K^g = U_k R_k (reduced QR, U with orthonormal columns), W_QK^h = U_q (R_q R_kᵀ) U_kᵀ has the singular
values and Frobenius norm of the d_head × d_head core R_q R_kᵀ; likewise W_OV^h with W_V^g = U_v R_v and
W_O^hᵀ = U_o R_o. A product of two circuits keeps one orthonormal factor on each side, so its Frobenius
norm is that of a d_head × d_head matrix, e.g. ‖W_OV^1 W_QK^2‖ = ‖(R_v1 W_O^1)(W_Q^2 R_k2ᵀ)‖.

Composition scores (Elhage et al.; TransformerLens's ``all_composition_scores``), head h1 of layer l1
writing, head h2 of a later layer l2 reading, as ‖M‖_F / (‖W_OV^{h1}‖_F ‖W_{read}^{h2}‖_F):
Q: M = W_OV^{h1} W_QK^{h2}, K: M = W_OV^{h1} W_QK^{h2}ᵀ, V: M = W_OV^{h1} W_OV^{h2}. (The paper writes
them for column vectors, ‖W_QK^{h2ᵀ} W_OV^{h1}‖ for Q; transposing every matrix gives these.)

The copying score of a head is Σλ / Σ|λ| over the eigenvalues λ of the full OV circuit W_E W_OV^h W_U
(n_vocab × n_vocab, the paper's W_U W_OV W_E transposed: the same eigenvalues), 1 when every eigenvalue
is positive. Its nonzero eigenvalues are those of the d_head × d_head matrix (W_O^h W_U)(W_E W_V^g)
(AB and BA share them), which is what is computed; zeros add nothing to either sum. W_U W_E [d, d] is
formed once for it (smaller than W_E itself).

Numerical rank: the count of singular values above σ_1 · d · ε, ε = 2⁻²³ (float32's machine epsilon:
weights are read as float32), numpy's ``matrix_rank`` rule for the d × d matrix in float32.
Biases are left out (they are not part of W_QK or W_OV), as are norm gains: these are the unfolded weights.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .errors import UnsupportedArchitecture
from .load import Checkpoint
from .ops.attention import d_head as d_head_symbol
from .program import Binding, Program, Stage
from .progress import progress_bar
from .terminal import terminal_text

RANK_EPSILON = float(np.finfo(np.float32).eps)
MODES = ("q", "k", "v")  # which input of the later head reads the earlier head's output
HEAD_WEIGHTS = ("W_Q", "W_K", "W_V", "W_O")


@dataclass(frozen=True)
class Spectrum:
    """One circuit matrix of one head, summarised."""

    frobenius: float
    singular_values: list[float]  # the largest, descending (at most --top of them)
    rank: int


@dataclass(frozen=True)
class OVSpectrum(Spectrum):
    copying: float | None = None  # Σλ/Σ|λ| of W_E W_OV W_U; None without an embedding and unembedding


@dataclass(frozen=True)
class HeadCircuits:
    qk: Spectrum
    ov: OVSpectrum


@dataclass(frozen=True)
class Circuits:
    """Every head of every layer, and the composition scores of every earlier head with every later one."""

    family: str
    d_model: int
    d_head: int
    n_head: int
    n_kv_head: int
    layers: list[list[HeadCircuits]]  # [layer][head]
    # mode -> [l1][h1][l2][h2]; None unless l1 < l2 (a head reads only what earlier layers wrote)
    composition: dict[str, list[list[list[list[float | None]]]]]

    def to_json(self) -> dict:
        """``layers[l].heads[h].qk.{frobenius, singular_values, rank}``, ``ov`` likewise plus ``copying``,
        ``composition.{q,k,v}[l1][h1][l2][h2]``; every index 0-based."""
        return {"family": self.family, "d_model": self.d_model, "d_head": self.d_head, "n_head": self.n_head,
                "n_kv_head": self.n_kv_head, "rank_tolerance": "sigma_1 * d_model * 2**-23",
                "layers": [{"heads": [asdict(head) for head in layer]} for layer in self.layers],
                "composition": self.composition}

    def table(self, strongest: int = 5) -> str:
        """The per-head figures as a table, then the ``strongest`` composition scores of each kind."""
        top = max((len(h.qk.singular_values) for layer in self.layers for h in layer), default=0)
        values = f"{'top σ':<{9 * top}}"
        lines = [f"circuits of the {terminal_text(self.family)} model: {len(self.layers)} layers × {self.n_head} heads "
                 f"({self.n_kv_head} key/value), d = {self.d_model}, d_head = {self.d_head}; "
                 "W_QK = W_Q^h W_K^hᵀ without 1/√d_head, W_OV = W_V^h W_O^h",
                 f"{'layer':>5} {'head':>4}  {'‖W_QK‖_F':>9} {values} {'rank':>4}  {'‖W_OV‖_F':>9} {values} "
                 f"{'rank':>4} {'copying':>8}"]
        for l, layer in enumerate(self.layers):
            for h, head in enumerate(layer):
                qk, ov = (f"{c.frobenius:>9.4g} {''.join(f'{s:<9.3g}' for s in c.singular_values):<{9 * top}} "
                          f"{c.rank:>4}" for c in (head.qk, head.ov))
                copying = "" if head.ov.copying is None else f"{head.ov.copying:>8.3f}"
                lines.append(f"{l:>5} {h:>4}  {qk}  {ov} {copying}".rstrip())
        for mode in MODES if len(self.layers) > 1 else ():
            pairs = "  ".join(f"L{l1}H{h1}→L{l2}H{h2} {score:.3f}"
                              for score, l1, h1, l2, h2 in self.strongest(mode, strongest))
            lines.append(f"{mode.upper()}-composition, strongest: {pairs}")
        return "\n".join(lines)

    def strongest(self, mode: str, count: int) -> list[tuple[float, int, int, int, int]]:
        """The ``count`` highest ``mode``-composition scores as (score, l1, h1, l2, h2), highest first."""
        return sorted(((score, l1, h1, l2, h2) for l1, by_head in enumerate(self.composition[mode])
                       for h1, by_layer in enumerate(by_head) for l2, row in enumerate(by_layer)
                       for h2, score in enumerate(row) if score is not None), reverse=True)[:count]


@dataclass(frozen=True)
class _HeadFactors:
    """One head's circuits as thin factors (float64): a d_head × d_head core for each, and the
    k × d / d × k factors that products of circuits reduce to (see the module docstring)."""

    qk_core: np.ndarray  # R_q R_kᵀ
    ov_core: np.ndarray  # R_v R_oᵀ
    ov_rows: np.ndarray  # R_v W_O^h: W_OV = U_v ov_rows
    ov_columns: np.ndarray  # W_V^g R_oᵀ: W_OV = ov_columns U_oᵀ
    qk_rows: np.ndarray  # R_q W_K^gᵀ: W_QK = U_q qk_rows, W_QKᵀ = qk_rowsᵀ U_qᵀ
    qk_columns: np.ndarray  # W_Q^h R_kᵀ: W_QK = qk_columns U_kᵀ


def _triangular(matrix: np.ndarray) -> np.ndarray:
    return np.linalg.qr(matrix, mode="r")


def layer_factors(w_q, w_k, w_v, w_o, head_width: int, group: int) -> list[_HeadFactors]:
    """The factors of each head of a layer (W_Q [d, n_head·d_head], W_K, W_V [d, n_kv_head·d_head],
    W_O [n_head·d_head, d]); query head h reads key/value head h // group. One QR per distinct factor."""
    def heads(matrix):  # [d, n·d_head] -> n × [d, d_head]
        return [matrix[:, i:i + head_width] for i in range(0, matrix.shape[1], head_width)]

    q, k, v, o_transposed = heads(w_q), heads(w_k), heads(w_v), heads(w_o.T)  # W_O^hᵀ [d, d_head]
    r_q, r_k, r_v, r_o = ([_triangular(m) for m in ms] for ms in (q, k, v, o_transposed))
    o = [m.T for m in o_transposed]
    return [_HeadFactors(qk_core=r_q[h] @ r_k[g].T, ov_core=r_v[g] @ r_o[h].T, ov_rows=r_v[g] @ o[h],
                         ov_columns=v[g] @ r_o[h].T, qk_rows=r_q[h] @ k[g].T, qk_columns=q[h] @ r_k[g].T)
            for h in range(len(q)) for g in [h // group]]


def spectrum(core: np.ndarray, d_model: int, top: int) -> Spectrum:
    singular_values = np.linalg.svd(core, compute_uv=False)
    tolerance = singular_values[0] * d_model * RANK_EPSILON if singular_values.size else 0.0
    return Spectrum(float(np.sqrt(np.sum(singular_values ** 2))), [float(s) for s in singular_values[:top]],
                    int(np.sum(singular_values > tolerance)))


def copying_score(full_ov_core: np.ndarray) -> float:
    """Σλ/Σ|λ| over the eigenvalues of (W_O^h W_U)(W_E W_V^g): the nonzero spectrum of W_E W_OV W_U."""
    eigenvalues = np.linalg.eigvals(full_ov_core)
    total = np.sum(np.abs(eigenvalues))
    return float(np.sum(eigenvalues).real / total) if total > 0 else 0.0


# reading the weights -----------------------------------------------------------------------------------
def _block(program: Program) -> Stage:
    """The repeated stage holding W_Q, W_K, W_V, W_O, or a one-line error naming what is missing."""
    for stage in program.stages:
        names = {param.name for param in stage.params}
        if stage.layers and set(HEAD_WEIGHTS) <= names:
            return stage
    raise UnsupportedArchitecture(
        f"circuits needs attention heads (W_Q, W_K, W_V, W_O in a repeated block); the {program.family} "
        "model has none")


def _reader(program: Program, checkpoint: Checkpoint):
    """``read(stage, name, layer)``: a parameter's numbers as float64, through its Binding."""
    def read(stage: Stage, name: str, layer: int | None) -> np.ndarray:
        param = next(p for p in stage.params if p.name == name)
        return Binding(stage, param, layer).read(checkpoint, program).astype(np.float64)
    return read


def _unembed_embed(program: Program, read) -> np.ndarray | None:
    """W_U W_E [d, d] (W_U [d, n_vocab], W_E [n_vocab, d]), or None unless the model has both."""
    stages = {stage.name: stage for stage in program.stages}
    embedding, unembedding = stages.get("embedding"), stages.get("unembedding")
    if embedding is None or unembedding is None:
        return None
    names = {param.name for param in unembedding.params}
    if "W_E" not in {param.name for param in embedding.params} or not names & {"W_U", "W_E"}:
        return None
    w_e = read(embedding, "W_E", None)
    w_u = read(unembedding, "W_U", None) if "W_U" in names else w_e.T  # tied: W_U = W_Eᵀ
    return w_u @ w_e


def measure(program: Program, checkpoint: Checkpoint, top: int = 8) -> Circuits:
    """Every head's QK/OV spectra and copying score, and the Q/K/V composition scores (see the module)."""
    block = _block(program)
    read = _reader(program, checkpoint)
    if d_head_symbol not in program.dims:
        raise UnsupportedArchitecture(f"circuits: the {program.family} model states no d_head")
    head_width = int(program.dims[d_head_symbol])
    d_model, query_width = program.numeric_shape(next(p.symbol for p in block.params if p.name == "W_Q"))
    key_width = program.numeric_shape(next(p.symbol for p in block.params if p.name == "W_K"))[1]
    n_head, n_kv_head = query_width // head_width, key_width // head_width
    if n_head * head_width != query_width or n_kv_head * head_width != key_width or n_head % n_kv_head:
        raise UnsupportedArchitecture(f"circuits: W_Q's {query_width} and W_K's {key_width} columns are not "
                                      f"whole heads of d_head = {head_width} in groups")
    unembed_embed = _unembed_embed(program, read)
    group = n_head // n_kv_head
    layers, factors = [], []
    for layer in progress_bar(range(block.layers), "circuits: heads", unit="layer"):
        w_q, w_k, w_v, w_o = (read(block, name, layer) for name in HEAD_WEIGHTS)
        factors.append(layer_factors(w_q, w_k, w_v, w_o, head_width, group))
        through_vocabulary = None if unembed_embed is None else w_o @ unembed_embed  # [n_head·d_head, d]
        heads = []
        for h, f in enumerate(factors[-1]):
            rows, g = slice(h * head_width, (h + 1) * head_width), h // group
            copying = None if through_vocabulary is None else copying_score(
                through_vocabulary[rows] @ w_v[:, g * head_width:(g + 1) * head_width])
            ov = spectrum(f.ov_core, d_model, top)
            heads.append(HeadCircuits(spectrum(f.qk_core, d_model, top), OVSpectrum(**asdict(ov), copying=copying)))
        layers.append(heads)
    return Circuits(program.family, d_model, head_width, n_head, n_kv_head, layers, composition_scores(factors))


def composition_scores(factors: list[list[_HeadFactors]]) -> dict[str, list]:
    """Q-, K-, V-composition of every head of layer l1 with every head of each layer l2 > l1.

    For one pair of layers, the earlier heads' ``ov_rows`` stacked [n_head·k, d] times the later heads'
    reading factors stacked [d, n_head·k]: one matrix product, then a Frobenius norm per [k, k] block.
    """
    n_layers, n_head = len(factors), len(factors[0]) if factors else 0
    norms = {circuit: np.array([[np.linalg.norm(getattr(f, circuit + "_core")) for f in layer] for layer in factors])
             for circuit in ("qk", "ov")}  # [layer, head]
    reading = {"q": ("qk_columns", "qk"), "k": ("qk_rows", "qk"), "v": ("ov_columns", "ov")}
    scores = {mode: np.full((n_layers, n_head, n_layers, n_head), np.nan) for mode in MODES}
    pairs = [(l1, l2) for l1 in range(n_layers) for l2 in range(l1 + 1, n_layers)]
    for l1, l2 in progress_bar(pairs, "circuits: composition", unit="layer pair"):
        writers = np.concatenate([f.ov_rows for f in factors[l1]])  # [n_head·k, d]
        for mode, (attribute, circuit) in reading.items():
            readers = [getattr(f, attribute) for f in factors[l2]]  # each [d, k] ([k, d] for K)
            readers = np.concatenate([r.T for r in readers] if mode == "k" else readers, axis=1)
            blocks = (writers @ readers).reshape(n_head, -1, n_head, readers.shape[1] // n_head)
            frobenius = np.sqrt(np.sum(blocks ** 2, axis=(1, 3)))  # [h1, h2]
            denominator = np.outer(norms["ov"][l1], norms[circuit][l2])
            scores[mode][l1, :, l2] = np.divide(frobenius, denominator, out=np.zeros_like(frobenius),
                                                where=denominator > 0)
    return {mode: np.where(np.isnan(array), None, array).tolist() for mode, array in scores.items()}
