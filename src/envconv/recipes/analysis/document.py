"""A tiny report document written twice: as Markdown and as a self-contained HTML page (images beside it)."""

from __future__ import annotations

import html
from typing import List, Sequence, Tuple

__all__ = ["Document"]


class Document:
    """Headings, paragraphs, tables and images, rendered by :meth:`markdown` and :meth:`html`."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.blocks: List[Tuple[str, tuple]] = []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", (text, level)))

    def text(self, text: str) -> None:
        self.blocks.append(("text", (text,)))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        self.blocks.append(("table", (list(header), [[str(c) for c in row] for row in rows])))

    def image(self, path: str, caption: str) -> None:
        """``path``: relative to the report's folder."""
        self.blocks.append(("image", (path, caption)))

    def images(self) -> List[str]:
        return [args[0] for kind, args in self.blocks if kind == "image"]

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, args in self.blocks:
            if kind == "heading":
                out += [f"{'#' * args[1]} {args[0]}", ""]
            elif kind == "text":
                out += [args[0], ""]
            elif kind == "table":
                header, rows = args
                out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                out += ["| " + " | ".join(row) + " |" for row in rows] + [""]
            else:
                out += [f"![{args[1]}]({args[0]})", "", f"*{args[1]}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        out = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'>", f"<title>{e(self.title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
               "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
               "font-size:90%}img{max-width:100%}figcaption{font-style:italic;font-size:90%}</style>",
               "</head><body>", f"<h1>{e(self.title)}</h1>"]
        for kind, args in self.blocks:
            if kind == "heading":
                out.append(f"<h{args[1]}>{e(args[0])}</h{args[1]}>")
            elif kind == "text":
                out.append(f"<p>{e(args[0])}</p>")
            elif kind == "table":
                header, rows = args
                out.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
                out.append("</table>")
            else:
                out.append(f"<figure><img src='{e(args[0])}' alt='{e(args[1])}'>"
                           f"<figcaption>{e(args[1])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)
