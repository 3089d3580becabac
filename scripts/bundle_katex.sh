#!/usr/bin/env bash
# Bundles KaTeX (MIT licence) into the package data, so `eqcompile MODEL --html` writes a page that
# opens offline and installs need no npm. Run it from anywhere; it rewrites templates/katex/:
#   katex.min.js   the renderer, as published
#   katex.min.css  its stylesheet with every woff2 font inlined as a data: URI (woff/ttf dropped:
#                  every browser that runs KaTeX reads woff2)
#   LICENSE        KaTeX's licence, shipped with the copy
#   VERSION        the version bundled
# Needs npm (the registry is reached through `npm pack`, which checks the tarball's integrity) and
# python3. Bump KATEX_VERSION, run this, and commit templates/katex/.
set -euo pipefail
KATEX_VERSION="${KATEX_VERSION:-0.19.1}"
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/templates/katex"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "katex@$KATEX_VERSION" >/dev/null && tar xzf "katex-$KATEX_VERSION.tgz")
grep -q "MIT License" "$work/package/LICENSE" || { echo "KaTeX licence is not MIT any more: check it" >&2; exit 1; }

mkdir -p "$out"
python3 - "$work/package" "$out" <<'PY'
import base64, pathlib, re, sys

package, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
dist = package / "dist"

def inline(match):
    name = match.group(1)
    data = base64.b64encode((dist / "fonts" / f"{name}.woff2").read_bytes()).decode()
    return f'src:url(data:font/woff2;base64,{data}) format("woff2")'

css = (dist / "katex.min.css").read_text(encoding="utf-8")
css, count = re.subn(r'src:url\(fonts/([\w-]+)\.woff2\) format\("woff2"\)(?:,url\([^)]*\) format\("[a-z]+"\))*', inline, css)
if count != css.count("@font-face") or "url(fonts/" in css:
    sys.exit(f"bundle_katex: inlined {count} fonts but the stylesheet has {css.count('@font-face')}")
js = (dist / "katex.min.js").read_text(encoding="utf-8")
if "</script" in js.lower():  # it is inlined in a <script> element
    sys.exit("bundle_katex: katex.min.js contains '</script'")
(out / "katex.min.css").write_text(css, encoding="utf-8")
(out / "katex.min.js").write_text(js, encoding="utf-8")
(out / "LICENSE").write_text((package / "LICENSE").read_text(encoding="utf-8"), encoding="utf-8")
PY
echo "$KATEX_VERSION" > "$out/VERSION"
du -ch "$out"/katex.min.* | tail -1 | sed "s|total|KaTeX $KATEX_VERSION bundled in $out|"
