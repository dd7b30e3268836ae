"""ComfyUI nodes of the BiRefNet toolkit: thin screens over the `birefnet` library."""

from . import compose, gradient_preview, host, loader, refine_edges, segment

host.register_folder()

NODE_SPECS = (loader.SPEC, segment.SPEC, refine_edges.SPEC, gradient_preview.SPEC, compose.SPEC)
