"""Node documentation pages for the ComfyUI frontend (`web/docs/<node id>.md`), made from the
node specs so that the page, the tooltips and the node cannot disagree.

    python -m nodes.docs    # rewrite web/docs from the specs (a test checks they are current)
"""

from __future__ import annotations

from pathlib import Path

from .spec import In, NodeSpec

DOCS = Path(__file__).resolve().parents[1] / "web" / "docs"


def _default(inp: In) -> str:
    if inp.default is None or inp.default == "":
        return ""
    text = f"`{inp.default}`"
    if inp.min is not None and inp.max is not None:
        text += f" ({inp.min} to {inp.max})"
    return text


def markdown(spec: NodeSpec) -> str:
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ")
    lines = [
        f"# {spec.display_name}",
        "",
        spec.description,
        "",
        "## Inputs",
        "",
        "| input | type | default | what it does |",
        "|---|---|---|---|",
    ]
    for inp in spec.inputs:
        kind = inp.type.lower() + (", optional" if inp.optional else "")
        lines.append(f"| `{inp.name}` | {kind} | {cell(_default(inp))} | {cell(inp.tooltip)} |")
    lines += ["", "## Outputs", "", "| output | type | what it is |", "|---|---|---|"]
    lines += [f"| `{out.name}` | {out.type.lower()} | {cell(out.tooltip)} |" for out in spec.outputs]
    if spec.search_aliases:
        lines += ["", "Search: " + ", ".join(f'"{alias}"' for alias in spec.search_aliases)]
    return "\n".join(lines) + "\n"


def write_docs(specs, folder: Path = DOCS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        (folder / f"{spec.node_id}.md").write_text(markdown(spec))


if __name__ == "__main__":
    from . import NODE_SPECS

    write_docs(NODE_SPECS)
    print(f"wrote {len(NODE_SPECS)} pages to {DOCS}")
