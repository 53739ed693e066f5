"""The ``/docs`` page: one self-contained HTML page rendered from the app's OpenAPI schema.

FastAPI's own pages (Swagger UI, ReDoc) load their scripts and styles from a CDN, so on a machine without
internet they are blank. This page is written on the server from ``/openapi.json`` and loads nothing: every
operation with its request fields, examples and documented answers, plus a small inline form that sends an
example (editable) and shows the answer.
"""

from __future__ import annotations

import json
from html import escape
from typing import Any

_STYLE = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;line-height:1.4}
code,pre,textarea{font-family:monospace;font-size:.9em}pre,textarea{background:#f4f4f4;padding:.5em;width:100%;
box-sizing:border-box}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em;
text-align:left;vertical-align:top}section{border-top:2px solid #888;margin-top:2em}"""

_SCRIPT = """function send(id,method,path){var out=document.getElementById(id+'-out');
var init={method:method};if(method!=='GET'){init.body=document.getElementById(id+'-body').value;
init.headers={'content-type':'application/json'}}fetch(path,init).then(function(r){return r.text().then(
function(t){out.textContent=r.status+' '+r.statusText+'\\n'+t})}).catch(function(e){out.textContent=e})}"""


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(component name or '', the schema itself) for a schema that may be a ``$ref``."""
    ref = schema.get("$ref", "")
    if ref.startswith("#/components/schemas/"):
        name = ref.rsplit("/", 1)[1]
        return name, spec["components"]["schemas"][name]
    return "", schema


def _type(spec: dict[str, Any], s: dict[str, Any]) -> str:
    """A short human-readable type of a JSON schema (``list of string | integer``, ``integer 1..60``)."""
    if "$ref" in s:
        return _resolve(spec, s)[0]
    if "anyOf" in s:
        return " | ".join(_type(spec, x) for x in s["anyOf"])
    if "enum" in s:
        return " | ".join(json.dumps(v) for v in s["enum"])
    if "const" in s:
        return json.dumps(s["const"])
    t = s.get("type", "any")
    if t == "array":
        return f"list of {_type(spec, s.get('items', {}))}"
    if "minimum" in s or "maximum" in s:  # FastAPI's schema model writes bounds as floats (1.0): show 1
        lo, hi = (s.get(b, "") for b in ("minimum", "maximum"))
        t += " " + "..".join(f"{int(v)}" if isinstance(v, float) and v.is_integer() else str(v) for v in (lo, hi))
    return str(t)


def _fields(spec: dict[str, Any], schema: dict[str, Any]) -> str:
    name, s = _resolve(spec, schema)
    required = set(s.get("required", []))
    rows = "".join(
        f"<tr><td><code>{escape(k)}</code></td><td>{escape(_type(spec, v))}</td>"
        f"<td>{'required' if k in required else escape(json.dumps(v.get('default')))}</td>"
        f"<td>{escape(v.get('description', ''))}</td></tr>" for k, v in s.get("properties", {}).items())
    return (f"<p>Body <code>{escape(name)}</code>:</p><table><tr><th>field</th><th>type</th><th>default</th>"
            f"<th>meaning</th></tr>{rows}</table>")


def _operation(spec: dict[str, Any], path: str, method: str, op: dict[str, Any], n: int) -> str:
    """One operation: summary, fields, answers and a form to try it."""
    oid = f"op{n}"
    parts = [f"<section><h2><code>{method.upper()} {escape(path)}</code></h2>",
             f"<p>{escape(op.get('description') or op.get('summary', ''))}</p>"]
    body = (op.get("requestBody") or {}).get("content", {}).get("application/json")
    example = ""
    if body:
        parts.append(_fields(spec, body["schema"]))
        examples = body.get("examples") or {}
        example = json.dumps(next(iter(examples.values()))["value"]) if examples else "{}"
    answers = "".join(
        f"<tr><td>{escape(status)}</td><td>{escape(r.get('description', ''))}</td><td>"
        f"{escape(_type(spec, r.get('content', {}).get('application/json', {}).get('schema', {})))}"
        f"{' + ' + ', '.join(escape(h) for h in r['headers']) + ' header' if r.get('headers') else ''}</td></tr>"
        for status, r in op.get("responses", {}).items())
    parts.append(f"<p>Answers:</p><table><tr><th>status</th><th>when</th><th>body</th></tr>{answers}</table>")
    if body:
        parts.append(f'<p>Try it:</p><textarea id="{oid}-body" rows="3">{escape(example)}</textarea>')
    parts.append(f"""<p><button onclick="send('{oid}','{method.upper()}','{escape(path)}')">send</button></p>"""
                 f'<pre id="{oid}-out"></pre></section>')
    return "".join(parts)


def docs_page(spec: dict[str, Any]) -> str:
    """The whole page for an OpenAPI ``spec`` (as ``app.openapi()`` returns it)."""
    info = spec.get("info", {})
    ops = [(p, m, op) for p, methods in spec.get("paths", {}).items() for m, op in methods.items()]
    body = "".join(_operation(spec, p, m, op, n) for n, (p, m, op) in enumerate(ops))
    title = escape(info.get("title", "API"))
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>{_STYLE}</style>"
            f"<script>{_SCRIPT}</script></head><body><h1>{title}</h1><p>{escape(info.get('description', ''))}</p>"
            f'<p>Version {escape(str(info.get("version", "")))}. The schema: <a href="openapi.json">'
            f"openapi.json</a>.</p>{body}</body></html>")
