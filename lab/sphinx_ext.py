"""Sphinx directives for the book: the chapter table and the reproduction ledger.

``{lab-chapters}`` lists the ten chapters from :mod:`lab.chapters`. ``{lab-ledger}`` is filled
at the end of the build, after every chapter has executed (or been taken from the cache), from
the claims recorded in the results folder; the page holding it is re-read on every build, so it
never shows stale results.
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


def ledger_html(records) -> str:
    by_id = {r["chapter"]: r for r in records}
    total = sum(len(r["claims"]) for r in records)
    ok = sum(c["reproduced"] for r in records for c in r["claims"])
    parts = [f"<p><b>{ok} of {total}</b> recorded claims reproduced, across "
             f"{len(records)} of {len(CHAPTERS)} chapters.</p>"]
    to_come = [html.escape(c.title) for c in CHAPTERS if not c.ready and c.id not in by_id]
    for chapter in CHAPTERS:
        record = by_id.get(chapter.id)
        if record is None and not chapter.ready:
            continue
        title = _chapter_link(chapter) if chapter.ready else html.escape(chapter.title)
        if record is None:
            parts.append(f"<h3>{title}</h3><p><i>not run in this build</i></p>")
            continue
        parts.append(f"<h3>{title}</h3><p>scale <code>{record['scale']}</code> · seed {record['seed']} · "
                     f"{html.escape(record['finished'])} · {record['wall_s']:.0f} s</p>")
        rows = "".join(
            f"<tr class='{'ok' if c['reproduced'] else 'miss'}'><td>{html.escape(c['id'])}</td>"
            f"<td>{html.escape(c['text'])}</td><td>{html.escape(c['display'])}</td>"
            f"<td>{html.escape(c['threshold'])}</td>"
            f"<td>{'✔ yes' if c['reproduced'] else ('✘ no' if c['gating'] else '⚠ no')}</td>"
            f"<td>{'gating' if c['gating'] else 'reported'}</td><td>{html.escape(c['paper'])}</td></tr>"
            for c in record["claims"])
        parts.append("<table class='lab-ledger'><thead><tr><th>claim</th><th>statement</th><th>measured</th>"
                     "<th>threshold</th><th>reproduced</th><th>kind</th><th>paper</th></tr></thead>"
                     f"<tbody>{rows}</tbody></table>")
    if to_come:
        parts.append(f"<p class='lab-to-come'><b>Chapters to come:</b> {'; '.join(to_come)}.</p>")
    return "\n".join(parts)


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
