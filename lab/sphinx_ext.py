"""Sphinx directives for the book: the chapter table and the reproduction ledger.

``{lab-chapters}`` lists the ten chapters from :mod:`lab.chapters`. ``{lab-ledger}`` is filled
at the end of the build, after every chapter has executed (or been taken from the cache), from
the claims recorded in the results folder and the committed seed-sweep records (see
:mod:`lab.ledger_view`); the page holding it is re-read on every build, so it never shows stale
results.
"""
from __future__ import annotations

import html

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

from .chapters import CHAPTERS


class ledger_placeholder(nodes.General, nodes.Element):
    pass


def _chapter_link(chapter) -> str:
    return f"<a href='{chapter.id}.html'>{html.escape(chapter.title)}</a>"


class ChaptersDirective(SphinxDirective):
    def run(self):
        rows = "".join(
            f"<tr><td>{i}</td><td>{_chapter_link(c) if c.ready else html.escape(c.title)}</td>"
            f"<td><code>{c.id}</code></td><td><a href='https://arxiv.org/abs/{c.arxiv}'>{c.arxiv}</a></td>"
            f"<td>{'ready' if c.ready else 'to come'}</td></tr>"
            for i, c in enumerate(CHAPTERS, 1))
        table = ("<table class='lab-chapters'><thead><tr><th>#</th><th>chapter</th><th>id</th>"
                 f"<th>arXiv</th><th>status</th></tr></thead><tbody>{rows}</tbody></table>")
        return [nodes.raw("", table, format="html")]


class LedgerDirective(SphinxDirective):
    def run(self):
        self.env.metadata[self.env.docname]["lab_ledger"] = True
        return [ledger_placeholder()]


LEDGER_HEAD = ("claim", "statement", "measured", "threshold", "reproduced", "kind",
               "held on (tiny sweep)", "gpu sweep", "paper")


def ledger_html(results, records_dir=None) -> str:
    """The ledger page's body: this build's results beside the committed sweep records."""
    from .ledger_view import entries, not_swept_at
    view = entries(results, records_dir)
    claims = [c for r in results for c in r["claims"]]
    failed = sum(1 for e in view if e.failure())
    parts = [f"<p><b>{sum(c['reproduced'] for c in claims)} of {len(claims)}</b> recorded claims "
             f"reproduced, across {len(results)} of {len(CHAPTERS)} chapters"
             + (f"; the last run failed in {failed} of them" if failed else "") + ".</p>"]
    parts += [_chapter_html(entry) for entry in view]
    gpu_pending = [html.escape(c.title) for c in not_swept_at(view)]
    if gpu_pending:
        parts.append(f"<p class='lab-pending'><b>Not yet run at gpu scale:</b> {'; '.join(gpu_pending)}.</p>")
    shown = {e.chapter.id for e in view}
    to_come = [html.escape(c.title) for c in CHAPTERS if c.id not in shown]
    if to_come:
        parts.append(f"<p class='lab-to-come'><b>Chapters to come:</b> {'; '.join(to_come)}.</p>")
    return "\n".join(parts)


def _chapter_html(entry) -> str:
    title = _chapter_link(entry.chapter) if entry.chapter.ready else html.escape(entry.chapter.title)
    parts = [f"<h3>{title}</h3>", f"<p>{html.escape(entry.run())}</p>"]
    if entry.failure():
        parts.append(f"<p class='lab-failed'>✘ The last run failed: {html.escape(entry.failure())}. "
                     "The values below are what it measured.</p>")
    sources = entry.sources() or ["no sweep record yet"]
    parts.append(f"<p class='lab-sources'>{'<br>'.join(map(html.escape, sources))}</p>")
    if entry.rows:
        head = "".join(f"<th>{h}</th>" for h in LEDGER_HEAD)
        rows = "".join(_row_html(r) for r in entry.rows)
        parts.append(f"<table class='lab-ledger'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return "".join(parts)


def _row_html(row) -> str:
    state = {None: "none", True: "ok", False: "miss"}[row.reproduced]
    verdict = {None: "—", True: "✔ yes", False: "✘ no" if row.kind == "gating" else "⚠ no"}[row.reproduced]
    cells = (row.id, row.text, row.measured, row.threshold, verdict, row.kind, row.seeds, row.gpu, row.paper)
    return f"<tr class='{state}'>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def fill_ledger(app, doctree, docname):
    from .claims import load_results
    for node in doctree.findall(ledger_placeholder):
        node.replace_self(nodes.raw("", ledger_html(load_results()), format="html"))


def docs_to_reread(app, env, added, changed, removed):
    """The ledger page on every build; every notebook when the source of ``lab`` has changed
    (Sphinx tracks only the notebook files, and their outputs depend on ``lab`` too)."""
    from .paths import source_hash
    docs = [doc for doc, meta in env.metadata.items() if meta.get("lab_ledger")]
    current = source_hash()
    if getattr(env, "lab_source_hash", None) != current:
        env.lab_source_hash = current
        docs += [doc for doc in env.found_docs if str(env.doc2path(doc)).endswith(".ipynb")]
    return docs


def setup(app):
    app.add_node(ledger_placeholder)
    app.add_directive("lab-chapters", ChaptersDirective)
    app.add_directive("lab-ledger", LedgerDirective)
    app.connect("doctree-resolved", fill_ledger)
    app.connect("env-get-outdated", docs_to_reread)
    app.add_css_file("lab.css")
    return {"version": "0.1", "parallel_read_safe": True, "parallel_write_safe": True}
