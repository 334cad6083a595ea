"""Markdown and self-contained HTML from format-neutral report blocks (text, table, list, image, code): one renderer
for run, seeds, compare, ensemble and sweep reports."""
from __future__ import annotations

import html
import re

import numpy as np

def _md_cell(text: str) -> str:
    return re.sub(r"([\\|<`])", r"\\\1", str(text)).replace("\n", " ")


def _md_code(text: str) -> str:
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def render_markdown(title: str, sections: list) -> str:
    """Markdown text for ``build_sections`` output."""
    out = [f"# {_md_cell(title)}", ""]
    for heading, blocks in sections:
        out += [f"## {_md_cell(heading)}", ""]
        for b in blocks:
            if b[0] == "text":
                out += [_md_cell(b[1]), ""]
            elif b[0] == "table":
                out.append("| " + " | ".join(_md_cell(h) for h in b[1]) + " |")
                out.append("|" + "|".join("---" for _ in b[1]) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b[2]]
                out.append("")
            elif b[0] == "list":
                out += [f"- {_md_code(k) + ': ' if k else ''}{_md_cell(v)}" for k, v in b[1]] + [""]
            elif b[0] == "image":
                out += [f"![{_md_cell(b[2])}]({b[1]})", ""]
            elif b[0] == "code":
                fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", b[1])), default=0) + 1)
                out += [f"{fence}yaml", b[1].rstrip("\n"), fence, ""]
    return "\n".join(out)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:1.6em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ddd;padding:.3em .7em;
text-align:right}th{background:#f4f6f8}td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#fafafa}
img{max-width:100%;border:1px solid #eee}pre{background:#f6f8fa;padding:1em;overflow:auto}code{font-size:.95em}"""


def render_html(title: str, sections: list) -> str:
    """Self-contained HTML (inline CSS; images by relative file name) for ``build_sections`` output."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for heading, blocks in sections:
        out.append(f"<h2>{e(heading)}</h2>")
        for b in blocks:
            if b[0] == "text":
                out.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr></thead><tbody>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b[2]]
                out.append("</tbody></table>")
            elif b[0] == "list":
                out.append("<ul>" + "".join(f"<li>{'<code>' + e(k) + '</code>: ' if k else ''}{e(v)}</li>"
                                            for k, v in b[1]) + "</ul>")
            elif b[0] == "image":
                out.append(f'<p><img src="{e(b[1])}" alt="{e(b[2])}"></p>')
            elif b[0] == "code":
                out.append(f"<pre><code>{e(b[1])}</code></pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def fmt(v, kind: str = "") -> str:
    """A cell: "pct" (0.91 -> 91.00%), "f4", "int" (thousands), "flop" (G/M/k FLOP); None and NaN show as a dash."""
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "\u2013"
    if kind == "pct":
        return f"{100 * float(v):.2f}%"
    if kind == "f4":
        return f"{float(v):.4f}"
    if kind == "int":
        return f"{int(v):,}"
    if kind == "flop":
        v = float(v)
        for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= scale:
                return f"{v / scale:.2f} {prefix}FLOP"
        return f"{v:g} FLOP"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
