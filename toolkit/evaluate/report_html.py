"""report.html: the report to browse, one self-contained file (inline CSS and script, images as data: URIs;
nothing fetched, no server: it opens from a copied folder). The run's facts and the evaluations table first,
then per-field accuracy with intervals, the field types' sections, the confusions of closed-set fields, the loss
charts, and an error browser: filter by field and evaluation, sort by edit distance or by wrong fields, text,
gold and prediction side by side.

Every text from data is escaped: in the page by html.escape, in the embedded JSON by writing <, > and & as
\\u escapes (a `</script>` in a record cannot end the block), and the script sets it as text, never as markup."""

from __future__ import annotations

import base64
import html
import json
from collections import Counter
from pathlib import Path

from toolkit.task.fields import kind
from toolkit.io.jsonl import write_text
from toolkit.task.recipe import Recipe
from toolkit.task.scoring import field_text, how_wrong

TOP_CONFUSIONS = 8  # per evaluation and field


def closed_set_fields(recipe: Recipe) -> list[str]:
    """The fields whose value is one text from a closed set (enum, or str with choices): where a wrong answer is
    another member of the set and the pairs say what is mistaken for what."""
    return [f.name for f in recipe.fields
            if kind(f).text and not kind(f).listed and recipe.choices(f.name) is not None]


def confusions(predictions: list[dict], field: str) -> list[tuple[str, str, int]]:
    """(gold, answered, count) of a field's wrong answers, most frequent first, the values as HTML (value_html);
    "(no JSON)" for an unparseable answer, "(missing)" for a field left out."""
    pairs: Counter = Counter()
    for p in predictions:
        if p["correct"][field]:
            continue
        got = _e("(no JSON)") if p["parsed"] is None else \
            value_html(p["parsed"][field]) if field in p["parsed"] else _e("(missing)")
        pairs[(value_html(p["gold"].get(field)), got)] += 1
    return [(g, a, n) for (g, a), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CONFUSIONS]]


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def value_html(value) -> str:
    """A field's value, escaped; null and the empty text drawn apart from any text (a value "null" included)."""
    if value is None:
        return '<span class="null">null</span>'
    if value == "":
        return '<span class="empty">""</span>'
    return _e(field_text(value))


def _table(head: list[str], rows: list[list[str]], raw: bool = False, cls: str = "") -> str:
    """An HTML table of texts (escaped here), or of cells already made safe (`raw`)."""
    cell = (lambda c: c) if raw else _e
    # in a box of its own that scrolls sideways: a table of many fields never widens the page past the window
    return (f'<div class="wide"><table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>"
                                               for r in rows) + "</tbody></table></div>")


def _interval(stat: dict) -> str:
    """A value with its 95% interval, drawn on 0–100%: a dot (shown at 0 too) on the interval's band."""
    v, (lo, hi) = (100 * stat["value"], (100 * stat["ci95"][0], 100 * stat["ci95"][1]))
    text = f"{v:.1f} [{lo:.0f}–{hi:.0f}]"
    return (f'<svg class="ci" width="100" height="12" viewBox="-3 0 106 12" role="img" aria-label="{_e(text)}">'
            f'<rect x="0" y="5.5" width="100" height="1" fill="#ccc"/>'
            f'<rect x="{lo:.1f}" y="3" width="{max(hi - lo, 0.5):.1f}" height="6" fill="#9ecae1"/>'
            f'<circle cx="{v:.1f}" cy="6" r="2.6" fill="#08519c"/></svg> <span class="num">{_e(text)}</span>')


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _script_json(obj) -> str:
    """JSON safe inside a <script> block."""
    text = json.dumps(obj, ensure_ascii=False)
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def error_rows(predictions: dict[str, list[dict]], fields: list[str]) -> list[dict]:
    """The error browser's rows: every answer with a wrong field, its wrong fields' edit distances."""
    rows = []
    for name, preds in predictions.items():
        for p in preds:
            distances = how_wrong(p, fields)
            if distances:
                rows.append({"e": name, "id": p["id"], "text": p["input"], "gold": p["gold"], "pred": p["parsed"],
                             "raw": p["raw"][:500] if p["parsed"] is None else None, "dist": distances})
    return rows


def write_html(recipe: Recipe, run_dir: Path, results: list[tuple[str, dict]], headline: str,
               facts: list[tuple[str, str]], table: tuple[list[str], list[list[str]]], notes: list[str],
               sections: list, predictions: dict[str, list[dict]],
               loss_diagnosis: str | None, head_diagnosis: str | None) -> Path:
    fields = recipe.field_names
    parts = [f"<h1>{_e(recipe.name)}: distillation report</h1>", f'<p class="headline">{_e(headline)}</p>']
    if recipe.description:
        parts.append(f"<p>{_e(recipe.description)}</p>")
    parts += ['<h2 id="summary">Summary</h2>', _table(["run", ""], [[k, v] for k, v in facts], cls="facts"),
              _table(*table, cls="evaluations"), *(f"<p>{_e(n)}</p>" for n in notes)]
    groups = [("exact match", "exact_match"), ("micro F1", "micro_f1"), *((f, f) for f in fields),
              ("JSON valid", "json_parse_rate")]
    parts += ['<h2 id="accuracy">Accuracy by field</h2>',
              "<p>% correct, the dot at the value on its 95% interval (Wilson for proportions, a bootstrap for "
              "the rest); a field compared by its type after the recipe's normalisers.</p>",
              _table(["evaluation", *(g for g, _ in groups)],
                     [[_e(name), *(_interval(m[key] if key in m else m["fields"][key]) for _, key in groups)]
                      for name, m in results], raw=True, cls="accuracy")]
    for s in sections:
        parts.append(f"<h2>{_e(s.title)}</h2>" + "".join(f"<p>{_e(n)}</p>" for n in s.notes))
        for caption, head, rows in s.tables:
            parts.append((f"<h3>{_e(caption)}</h3>" if caption else "") + _table(head, rows))
    closed = closed_set_fields(recipe)
    if closed and predictions:
        parts += ['<h2 id="confusions">Confusions (closed-set fields)</h2>',
                  f"<p>Per evaluation, the {TOP_CONFUSIONS} most frequent wrong answers of each field whose value "
                  "is one of a closed set: what the gold value was answered as.</p>"]
        for field in closed:
            rows = [[_e(name), g, a, str(n)] for name, preds in predictions.items()
                    for g, a, n in confusions(preds, field)]
            parts.append(f"<h3>{_e(field)}</h3>" + (_table(["evaluation", "gold", "answered", "count"], rows, raw=True,
                                                           cls="confusion") if rows else "<p>No wrong answers.</p>"))
    for png, alt, verdict in (("loss.png", "training loss", loss_diagnosis),
                              ("loss-head.png", "loss of the classification head", head_diagnosis)):
        if (run_dir / png).is_file():
            parts += [f"<h2>{_e(alt.capitalize())}</h2>", _image(run_dir / png, alt),
                      f"<p>Fit: {_e(verdict or 'see the chart')}.</p>"]
    names = list(predictions)
    parts += ['<h2 id="errors">Errors</h2>',
              '<div class="controls"><label>evaluation <select id="f-eval"><option value="">all</option>'
              + "".join(f'<option value="{_e(n)}">{_e(n)}</option>' for n in names) + "</select></label> "
              '<label>field <select id="f-field"><option value="">any</option>'
              + "".join(f'<option value="{_e(f)}">{_e(f)}</option>' for f in fields) + "</select></label> "
              '<label>sort by <select id="f-sort"><option value="wrong">wrong fields</option>'
              '<option value="distance">edit distance</option></select></label> <span id="count"></span></div>',
              '<div class="wide"><table class="errors"><thead><tr><th>evaluation</th><th>id</th><th>wrong fields'
              "</th><th>edit distance</th><th>text</th><th>gold</th><th>prediction</th></tr></thead>"
              '<tbody id="error-rows"></tbody></table></div>',
              f'<script type="application/json" id="errors-data">'
              f'{_script_json({"fields": fields, "rows": error_rows(predictions, fields)})}</script>',
              f"<script>{SCRIPT}</script>"]
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(recipe.name)} report</title>'
            f"<style>{STYLE}</style></head><body>" + "\n".join(parts) + "</body></html>\n")
    return write_text(run_dir / "report.html", page)


# Fits a 1400-pixel window: the error browser's texts and values wrap anywhere, an interval's number goes under its
# bar when a column is narrow, and a table still too wide scrolls in its own box (div.wide), not the page.
STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
.headline{font-size:1.15em;font-weight:600}
.wide{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:.5em 0 1em}th,td{border:1px solid #ddd;padding:3px 6px;vertical-align:top;
text-align:left;overflow-wrap:break-word}th{background:#f3f3f3}table.errors td{overflow-wrap:anywhere}.num{white-space:nowrap;font-variant-numeric:tabular-nums}
svg.ci{vertical-align:middle}img{max-width:100%}
table.errors td.text{max-width:28em}table.errors .bad{background:#fdd}table.errors .k{color:#666}
.null,.empty,.missing{font-family:monospace;color:#8a4b00;background:#f6efe4;padding:0 2px;border-radius:2px}
.controls{margin:.5em 0;display:flex;gap:1em;flex-wrap:wrap;align-items:center}
"""

# The error browser. Data arrive as JSON and become text nodes only (textContent), never markup.
SCRIPT = """
(() => {
  const data = JSON.parse(document.getElementById('errors-data').textContent);
  const LIMIT = 300;
  const $ = id => document.getElementById(id);
  const total = r => Object.values(r.dist).reduce((a, b) => a + b, 0);
  const wrong = r => Object.keys(r.dist).length;
  // null, the empty text and a field left out each drawn apart from any text (as value_html does)
  function value(v) {
    const marked = (cls, t) => { const s = document.createElement('span'); s.className = cls; s.textContent = t; return s; };
    if (v === undefined) return marked('missing', '(missing)');
    if (v === null) return marked('null', 'null');
    if (v === '') return marked('empty', '""');
    return document.createTextNode(typeof v === 'string' ? v : JSON.stringify(v));
  }
  function cell(content, cls) {
    const td = document.createElement('td');
    if (cls) td.className = cls;
    if (content instanceof Node) td.appendChild(content); else td.textContent = content;
    return td;
  }
  function record(values, r) {
    const box = document.createElement('div');
    if (values === null) { box.textContent = 'no JSON: ' + r.raw; return box; }
    for (const f of data.fields) {
      const line = document.createElement('div');
      if (f in r.dist) line.className = 'bad';
      const k = document.createElement('span');
      k.className = 'k';
      k.textContent = f + ': ';
      line.append(k, value(values[f]));
      box.appendChild(line);
    }
    return box;
  }
  function render() {
    const e = $('f-eval').value, f = $('f-field').value, by = $('f-sort').value;
    const distance = r => f ? r.dist[f] : total(r);
    const rows = data.rows.filter(r => (!e || r.e === e) && (!f || f in r.dist));
    rows.sort((a, b) => (by === 'distance' ? distance(b) - distance(a) || wrong(b) - wrong(a)
                                           : wrong(b) - wrong(a) || distance(b) - distance(a))
                        || (a.e < b.e ? -1 : a.e > b.e ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    $('error-rows').replaceChildren(...rows.slice(0, LIMIT).map(r => {
      const tr = document.createElement('tr');
      tr.dataset.id = r.id;
      tr.append(cell(r.e), cell(r.id), cell(String(wrong(r)), 'num'), cell(String(distance(r)), 'num'),
                cell(r.text, 'text'), cell(record(r.gold, r)), cell(record(r.pred, r)));
      return tr;
    }));
    $('count').textContent = rows.length + ' wrong answers' + (rows.length > LIMIT ? ', the first ' + LIMIT + ' shown' : '');
  }
  for (const id of ['f-eval', 'f-field', 'f-sort']) $(id).addEventListener('change', render);
  render();
})();
"""
