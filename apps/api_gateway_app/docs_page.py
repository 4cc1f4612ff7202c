"""/docs: the OpenAPI document rendered server-side as one self-contained HTML page
(no JavaScript, no third-party CDN)."""

from __future__ import annotations

import json
from html import escape
from typing import Any

_METHODS = ("get", "post", "put", "delete")
_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:960px;margin:2rem auto;padding:0 1rem;color:#1d232a}
h1{margin-bottom:.2rem} .op{border:1px solid #d0d7de;border-radius:6px;margin:1rem 0;padding:.6rem 1rem}
.verb{display:inline-block;min-width:4.5rem;font-weight:700;color:#fff;border-radius:4px;text-align:center;
padding:.1rem .4rem;margin-right:.6rem} .get{background:#1f6feb}.post{background:#1a7f37}
.put{background:#9a6700}.delete{background:#cf222e} code,pre{background:#f6f8fa;border-radius:4px}
pre{padding:.5rem;overflow:auto} table{border-collapse:collapse} td,th{border:1px solid #d0d7de;padding:.2rem .5rem;
text-align:left;vertical-align:top} .path{font-family:monospace;font-size:1.05rem}
"""


def _example(content: dict[str, Any]) -> str:
    for media in content.values():
        if "example" in media:
            return f"<pre>{escape(json.dumps(media['example'], indent=2, ensure_ascii=False))}</pre>"
    return ""


def _operation(path: str, method: str, op: dict[str, Any], shared_params: list[dict[str, Any]]) -> str:
    parts = [
        f'<section class="op" id="{escape(op["operationId"])}">',
        f'<h3><span class="verb {method}">{method.upper()}</span><span class="path">{escape(path)}</span></h3>',
        f"<p><strong>{escape(op['summary'])}.</strong> {escape(op['description'])}</p>",
    ]
    params = shared_params + op.get("parameters", [])
    if params:
        rows = "".join(
            f"<tr><td><code>{escape(p['name'])}</code></td><td>{escape(p['in'])}</td>"
            f"<td>{'yes' if p.get('required') else 'no'}</td><td>{escape(p.get('description', ''))}</td></tr>"
            for p in params
        )
        parts.append(f"<table><tr><th>parameter</th><th>in</th><th>required</th><th></th></tr>{rows}</table>")
    if "requestBody" in op:
        body = op["requestBody"]
        parts.append(f"<p>Request body (JSON): {escape(body.get('description', ''))}</p>{_example(body['content'])}")
    rows = "".join(
        f"<tr><td><strong>{escape(status)}</strong></td><td>{escape(resp['description'])}"
        f"{_example(resp.get('content', {}))}</td></tr>"
        for status, resp in op["responses"].items()
    )
    parts.append(f"<table><tr><th>status</th><th>meaning and example</th></tr>{rows}</table></section>")
    return "".join(parts)


def render(document: dict[str, Any]) -> str:
    info = document["info"]
    sections = []
    for path, item in document["paths"].items():
        for method in _METHODS:
            if method in item:
                sections.append(_operation(path, method, item[method], item.get("parameters", [])))
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{escape(info['title'])}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(info['title'])}</h1><p>{escape(info['description'])}</p>"
        '<p>Machine-readable: <a href="/openapi.json">/openapi.json</a></p>' + "".join(sections) + "</body></html>"
    )
