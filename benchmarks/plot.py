"""scaling.png: the run's scaling figures in four panels (matplotlib, a benchmark-only dependency)."""

from __future__ import annotations

from pathlib import Path


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ((layers_ax, emission_ax), (documents_ax, forward_ax)) = plt.subplots(2, 2, figsize=(12, 8.4))
    symbolic = results["symbolic"]
    counts = [int(layers) for layers in symbolic["layers"]]
    for command, style in (("latex", "o-"), ("stats", "s-")):
        walls = [row[command]["wall"] for row in symbolic["layers"].values()]
        layers_ax.plot(counts, walls, style, label=f"eqcompile {'MODEL --latex' if command == 'latex' else 'stats MODEL'}")
    floor = symbolic["floor"]["import eqcompile.cli"]["wall"]
    layers_ax.axhline(floor, color="grey", ls=":", label="import eqcompile.cli")
    layers_ax.set(xlabel="layers (GPT-2, d = 768, header only)", ylabel="wall time, s (fresh process)",
                  title="Symbolic compile vs depth", xscale="log", ylim=(0, None))
    layers_ax.set_xticks(counts, [str(c) for c in counts])
    layers_ax.legend(fontsize=8)

    emission = symbolic["emission"]
    for key, label in (("compile", "compile"), ("latex", "LaTeX, block once"), ("latex_unrolled", "LaTeX, unrolled"),
                       ("stats", "stats")):
        emission_ax.plot(counts, [1e3 * row[key] for row in emission.values()], "o-", label=label)
    emission_ax.set(xlabel="layers", ylabel="ms (in process)", title="Emission vs depth", xscale="log", yscale="log")
    emission_ax.set_xticks(counts, [str(c) for c in counts])
    emission_ax.legend(fontsize=8)

    rows = results["documents"]["documents"]["rows"]
    depths = [row["layers"] for row in rows]
    for key, label in (("pdf_total", "`--pdf` in all"), ("pdf", "latexmk + pdflatex"), ("appendix", "appendix content"),
                       ("latex_unrolled", "LaTeX, unrolled")):
        if key in rows[0]:
            documents_ax.plot(depths, [row[key] for row in rows], "o-", label=label)
    documents_ax.set(xlabel="layers (GPT-2, header only)", ylabel="seconds (in process)", title="Documents vs depth",
                     ylim=(0, None))
    documents_ax.set_xticks(depths, [str(d) for d in depths])
    documents_ax.legend(fontsize=8)

    for (name, model), color in zip(results["numeric"]["models"].items(), ("C0", "C1")):
        spec, peers = model["spec"], model["peers"]
        lengths = spec["lengths"]
        emitted = [peers["numpy"]["forward"][str(n)]["best"] for n in lengths]
        short = name.split(",")[0]
        for peer, style in (("torch", "o-"), ("onnxruntime", "^-")):
            if peer in peers:
                forward_ax.plot(lengths, [e / peers[peer]["forward"][str(n)]["best"] for e, n in zip(emitted, lengths)],
                                style, color=color, label=f"{short}: numpy / {peer}")
        forward_ax.plot(lengths, [spec["flops"][str(n)] / e / peers["numpy"]["peak_flops"]
                                  for e, n in zip(emitted, lengths)], "s--", color=color,
                        label=f"{short}: numpy, fraction of sgemm peak")
    forward_ax.axhline(0.5, color="grey", ls=":", label="target vs PyTorch: 0.5")
    forward_ax.axhline(1.0, color="grey", ls="--", label="target vs onnxruntime: 1.0")
    forward_ax.set(xlabel="sequence length", xscale="log", ylim=(0, None),
                   title="Emitted forward, each implementation in its own process")
    forward_ax.set_xticks(lengths, [str(n) for n in lengths])
    forward_ax.legend(fontsize=7)
    for ax in (layers_ax, emission_ax, documents_ax, forward_ax):
        ax.xaxis.set_minor_formatter(NullFormatter())
    emission_ax.yaxis.set_major_formatter(ScalarFormatter())
    emission_ax.yaxis.set_minor_formatter(NullFormatter())

    machine = results["machine"]
    fig.suptitle(f"eqcompile benchmarks: {machine['cpu']}, {machine['threads']} threads, "
                 f"load average {machine['load_average_at_start'][0]:.1f} at start", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
