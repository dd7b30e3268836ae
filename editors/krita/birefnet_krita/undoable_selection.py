"""A mask as the active selection in one undo step, on Krita 5.1 to 6.

Document.setSelection records no undo step (Krita 5.1 to 5.3), so Ctrl+Z could not bring back the selection
there was. Krita's own Select Opaque records one ("Select Opaque" in the undo history): it replaces the active
selection (the layer's active local selection mask, else the global one) with a node's opacity; its Undo brings
back the selection there was and its Redo the new one. So the mask goes into a temporary hidden mask on the
layer, Select Opaque runs on it, and the temporary mask is taken out again. Both moves go through
Node.setChildNodes, which records no undo step (Node.addChildNode and Node.remove record one each)."""

from krita import Krita, Selection

from .pixels import UnsupportedLayer
from .qt import QByteArray

HOLDER_NAME = "BiRefNet subject (temporary)"
_setchildnodes_removes_all = None  # found once per Krita session (_removes_all)


def select_mask(doc, layer, mask: bytes, x: int, y: int, width: int, height: int) -> None:
    """`mask` (one byte a pixel, not all zero) replaces the active selection of `layer` in one undo step.
    Runs on the UI thread, with `doc` the active document; the active node is the same afterwards. Krita's
    Select Opaque reads the mask on the UI thread and this waits for Krita to apply it: Krita's own work."""
    pixels = Selection()
    pixels.setPixelData(QByteArray(mask), x, y, width, height)
    # a filter mask is the mask type Krita 5.1's API fills with pixels; hidden, its filter never runs
    holder = doc.createFilterMask(HOLDER_NAME, Krita.instance().filter("invert"), pixels)
    holder.setVisible(False)
    children, active = layer.childNodes(), doc.activeNode()
    doc.waitForDone()  # Node.setChildNodes changes the layer stack at once: never under Krita's running work
    try:
        _arrange(doc, layer, [holder, *children])
        doc.setActiveNode(holder)  # its layer's active selection stays the one Select Opaque replaces
        if doc.activeNode() is None or doc.activeNode().uniqueId() != holder.uniqueId():
            raise UnsupportedLayer(f'Krita did not let BiRefNet work on "{layer.name()}": try again.')
        select_opaque = Krita.instance().action("selectopaque")
        if not select_opaque.isEnabled():
            raise UnsupportedLayer(
                f'Krita does not let the selection of "{layer.name()}" change: unlock its local selection mask '
                "and try again."
            )
        select_opaque.trigger()  # reads the mask on the UI thread, then applies it in Krita's worker threads
        doc.waitForDone()  # the mask leaves once they are done
    finally:
        _arrange(doc, layer, children)
        if active is not None:
            doc.setActiveNode(active)


def _arrange(doc, layer, wanted: list) -> None:
    """Gives `layer` the children `wanted` (bottom to top) through Node.setChildNodes, without an undo step.
    Krita 5.1.5 and later take out only the bottom child per call (its loop stops after the first), then add
    every listed node that has no parent on top (one that has a parent fails an internal check). So each call
    there lists the nodes still to add and the bottom child if it stays: it moves to the top, and the children
    go round until they stand as wanted (at most one call per child)."""
    wanted_ids = [node.uniqueId() for node in wanted]
    for _ in range(len(wanted) + 2):
        children = layer.childNodes()
        ids = [child.uniqueId() for child in children]
        if ids == wanted_ids:
            return
        if _removes_all(doc):
            layer.setChildNodes(wanted)
            continue
        bottom = children[:1] if ids and ids[0] in wanted_ids else []
        layer.setChildNodes([node for node in wanted if node.uniqueId() not in ids] + bottom)
    if [child.uniqueId() for child in layer.childNodes()] != wanted_ids:
        raise UnsupportedLayer(
            f'Krita did not put the masks of "{layer.name()}" back in order: check them (BiRefNet\'s temporary '
            f'mask is "{HOLDER_NAME}").'
        )


def _removes_all(doc) -> bool:
    """Whether Node.setChildNodes takes out every child, as its documentation says, or only the bottom one
    (Krita 5.1.5 and later). Tried once on a group that is not in the image: the document does not change."""
    global _setchildnodes_removes_all
    if _setchildnodes_removes_all is None:
        group = doc.createGroupLayer("probe")
        group.setChildNodes([doc.createNode("bottom", "paintlayer"), doc.createNode("top", "paintlayer")])
        group.setChildNodes([])
        _setchildnodes_removes_all = not group.childNodes()
    return _setchildnodes_removes_all
