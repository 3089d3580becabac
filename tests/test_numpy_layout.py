"""Weight layouts the emitted numpy module chooses on loading (issue 19): a weight multiplied only
as its transpose is held column-major, once, and the logits stay transformers'."""

from __future__ import annotations

import numpy as np

import eqcompile
from conftest import reference_logits
from eqcompile.emit.python import import_module


def test_tied_unembedding_is_held_once_column_major(tiny_gpt2, tmp_path):
    module = import_module(eqcompile.compile(tiny_gpt2).to_python(tmp_path / "py"), "layout_gpt2")
    assert module.COLUMN_MAJOR == ["embedding.W_E"]
    table = module.WEIGHTS["unembedding"]["W_E"]
    assert table.mT.flags.c_contiguous and table is module.WEIGHTS["embedding"]["W_E"]
    assert all(w.flags.c_contiguous for w in module.WEIGHTS["block"][0].values())  # the file's layout
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    np.testing.assert_allclose(module.forward(tokens), reference_logits(tiny_gpt2, tokens), atol=2e-5, rtol=1e-4)


def test_untied_unembedding_keeps_the_file_layout(family, tmp_path):
    folder, options = family("llama-gqa")
    source = (eqcompile.compile(folder, **options).to_python(tmp_path / "py")).read_text()
    assert "COLUMN_MAJOR" not in source  # its W_U is stored [d, n_vocab]: W_U, not a transpose
