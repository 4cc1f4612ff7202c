"""/docs: the OpenAPI document rendered server-side as one self-contained HTML page
(no JavaScript, no web font, nothing fetched from another site)."""

from __future__ import annotations

import json
import re
from html import escape
from typing import Any

_METHODS = ("get", "post", "put", "patch", "delete")
_CODE = re.compile(r"`([^`]+)`")
_INLINE_EXAMPLE_CHARS = 160  # a compact example up to this length is shown compact (wrapped), not indented

_STYLE = """
:root{--border:#d8dee4;--muted:#57606a;--code:#f3f5f7}
*{box-sizing:border-box}
body{font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2328;margin:0;background:#fff}
main{max-width:1080px;margin:0 auto;padding:2rem 1.5rem 4rem}
header{border-bottom:1px solid var(--border);padding-bottom:1rem;margin-bottom:1.5rem}
h1{font-size:1.9rem;margin:0 0 .3rem} h2{font-size:1.35rem;margin:2.4rem 0 .2rem}
h3{font-size:1.05rem;margin:0;display:flex;align-items:center;gap:.7rem;flex-wrap:wrap}
.version{font-size:.8rem;color:var(--muted);border:1px solid var(--border);border-radius:1rem;padding:.05rem .6rem;
vertical-align:middle;margin-left:.5rem}
.muted{color:var(--muted)} a{color:#0969da;text-decoration:none} a:hover{text-decoration:underline}
code,pre{font:13px/1.45 ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;background:var(--code);
border-radius:4px}
code{padding:.1rem .3rem} pre{padding:.5rem .7rem;margin:.4rem 0;overflow:auto;white-space:pre}
pre.compact{white-space:pre-wrap;overflow-wrap:anywhere}
.verb{display:inline-block;min-width:4.6rem;font:700 .8rem/1.9 system-ui,sans-serif;color:#fff;border-radius:4px;
text-align:center;letter-spacing:.04em}
.get{background:#0969da}.post{background:#1a7f37}.put{background:#9a6700}.delete{background:#cf222e}
.patch{background:#8250df}
.path{font:600 1rem ui-monospace,"DejaVu Sans Mono",monospace} .summary{font-weight:400;color:var(--muted)}
table{border-collapse:collapse;width:100%;margin:.5rem 0 .2rem}
th,td{border-bottom:1px solid var(--border);padding:.35rem .5rem;text-align:left;vertical-align:top}
th{font-size:.78rem;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);font-weight:600}
table.toc{width:auto} .toc td{border:0;padding:.12rem .6rem .12rem 0} .toc .verb{min-width:4rem}
.op{border:1px solid var(--border);border-radius:8px;margin:1rem 0;padding:.9rem 1.1rem}
.op p{margin:.5rem 0}
.label{font-size:.78rem;text-transform:uppercase;letter-spacing:.05em;color:var(--muted);font-weight:600;
margin:.9rem 0 .1rem}
.status{font-weight:700;white-space:nowrap;width:3.5rem} .s2{color:#1a7f37}.s4{color:#9a6700}.s5{color:#cf222e}
td.example{width:55%} td.example pre{margin:0}
footer{margin-top:3rem;color:var(--muted);font-size:.85rem}
"""


def _text(value: str) -> str:
    """Escaped text, with Markdown `code` spans as <code>."""
    return _CODE.sub(r"<code>\1</code>", escape(value))


def _example(content: dict[str, Any]) -> str:
    for media in content.values():
        if "example" not in media:
            continue
        example = media["example"]
        if isinstance(example, str):
            return f"<pre>{escape(example)}</pre>"
        compact = json.dumps(example, ensure_ascii=False, separators=(", ", ": "))
        if len(compact) <= _INLINE_EXAMPLE_CHARS:
            return f'<pre class="compact">{escape(compact)}</pre>'
        return f"<pre>{escape(json.dumps(example, indent=2, ensure_ascii=False))}</pre>"
    return ""


def _badge(method: str) -> str:
    return f'<span class="verb {method}">{method.upper()}</span>'


def _parameters(params: list[dict[str, Any]]) -> str:
    rows = "".join(
        f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
        f"<td>{escape(p.get('schema', {}).get('type', ''))}</td>"
        f"<td>{'yes' if p.get('required') else 'no'}</td><td>{_text(p.get('description', ''))}</td></tr>"
        for p in params
    )
    return (
        '<p class="label">Parameters</p><table><tr><th>name</th><th>in</th><th>type</th><th>required</th>'
        f"<th>description</th></tr>{rows}</table>"
    )


def _responses(responses: dict[str, Any]) -> str:
    rows = "".join(
        f'<tr><td class="status s{escape(status[0])}">{escape(status)}</td><td>{_text(resp["description"])}</td>'
        f'<td class="example">{_example(resp.get("content", {}))}</td></tr>'
        for status, resp in responses.items()
    )
    return (
        '<p class="label">Responses</p><table><tr><th>status</th><th>meaning</th><th>example body</th></tr>'
        f"{rows}</table>"
    )


def _operation(path: str, method: str, op: dict[str, Any], shared_params: list[dict[str, Any]]) -> str:
    parts = [
        f'<section class="op" id="{escape(op["operationId"])}">',
        f'<h3>{_badge(method)}<span class="path">{escape(path)}</span>'
        f'<span class="summary">{escape(op["summary"])}</span></h3>',
        f"<p>{_text(op['description'])}</p>",
    ]
    params = shared_params + op.get("parameters", [])
    if params:
        parts.append(_parameters(params))
    if "requestBody" in op:
        body = op["requestBody"]
        parts.append(
            f'<p class="label">Request body (application/json)</p><p>{_text(body.get("description", ""))}</p>'
            f"{_example(body['content'])}"
        )
    parts.append(_responses(op["responses"]))
    parts.append("</section>")
    return "".join(parts)


def _operations(document: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any], list[dict[str, Any]]]]:
    """(tag, path, method, operation, path-level parameters) in document order."""
    found = []
    for path, item in document["paths"].items():
        for method in _METHODS:
            if method in item:
                op = item[method]
                tag = (op.get("tags") or ["other"])[0]
                found.append((tag, path, method, op, item.get("parameters", [])))
    return found


def render(document: dict[str, Any]) -> str:
    """The whole page for an OpenAPI 3 document."""
    info = document["info"]
    operations = _operations(document)
    tags = [t["name"] for t in document.get("tags", [])]
    tags += [tag for tag, *_ in operations if tag not in tags]
    tag_text = {t["name"]: t.get("description", "") for t in document.get("tags", [])}

    toc = "".join(
        f'<tr><td>{_badge(method)}</td><td><a class="path" href="#{escape(op["operationId"])}">{escape(path)}</a>'
        f'</td><td class="muted">{escape(op["summary"])}</td></tr>'
        for _tag, path, method, op, _shared in operations
    )
    sections = []
    for tag in tags:
        ops = [entry for entry in operations if entry[0] == tag]
        if not ops:
            continue
        sections.append(
            f'<h2 id="tag-{escape(tag)}">{escape(tag)}</h2><p class="muted">{_text(tag_text.get(tag, ""))}</p>'
        )
        sections.extend(_operation(path, method, op, shared) for _tag, path, method, op, shared in ops)
    servers = ", ".join(f"<code>{escape(s['url'])}</code>" for s in document.get("servers", []))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(info['title'])}</title><style>{_STYLE}</style></head><body><main>"
        f'<header><h1>{escape(info["title"])}<span class="version">v{escape(info["version"])}</span></h1>'
        f"<p>{_text(info['description'])}</p>"
        f'<p class="muted">Server: {servers} · machine-readable: <a href="/openapi.json">/openapi.json</a> '
        f"(OpenAPI {escape(document['openapi'])})</p></header>"
        f'<nav><p class="label">Routes</p><table class="toc">{toc}</table></nav>'
        + "".join(sections)
        + '<footer>Rendered by api-gateway-app from <a href="/openapi.json">/openapi.json</a>.</footer>'
        "</main></body></html>"
    )
