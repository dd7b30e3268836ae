"""One definition per node, registered through ComfyUI's V3 schema (comfy_api) when the host
has it and as a V1 class otherwise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class In:
    name: str
    type: str  # IMAGE, MASK, BIREFNET, INT, FLOAT, BOOLEAN, STRING, COMBO
    tooltip: str
    default: Any = None
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple | Callable[[], list] | None = None  # COMBO choices (or a function giving them)
    optional: bool = False
    advanced: bool = False


@dataclass(frozen=True)
class Out:
    name: str
    type: str
    tooltip: str


@dataclass(frozen=True)
class NodeSpec:
    node_id: str
    display_name: str
    category: str
    description: str
    inputs: tuple[In, ...]
    outputs: tuple[Out, ...]
    run: Callable[..., tuple]
    output_node: bool = False
    search_aliases: tuple[str, ...] = ()  # what users type in the node search ("remove background", "rmbg")
    extra: dict = field(default_factory=dict)


def _options(inp: In) -> list:
    return list(inp.options() if callable(inp.options) else inp.options)


def checked(spec: NodeSpec, kwargs: dict) -> dict:
    """`kwargs`, once every fixed combo value in it is one of its choices: ComfyUI checks them before running,
    except a V3 node's before December 2025 (ComfyUI#11345), where an unknown value from an API prompt passed
    silently (device "cuda:1" ran on the default device). The weight list is checked where it is read."""
    for inp in spec.inputs:
        if inp.type == "COMBO" and not callable(inp.options) and inp.name in kwargs:
            if kwargs[inp.name] not in inp.options:
                choices = ", ".join(map(repr, inp.options))
                raise ValueError(f"{spec.display_name}: {inp.name} must be one of {choices}, got {kwargs[inp.name]!r}")
    return kwargs


def v1_class(spec: NodeSpec) -> type:
    """A classic node class (INPUT_TYPES, RETURN_TYPES, FUNCTION...)."""

    def input_types(cls):
        required, optional = {}, {}
        for inp in spec.inputs:
            opts = {"tooltip": inp.tooltip}
            for key in ("default", "min", "max", "step"):
                if getattr(inp, key) is not None:
                    opts[key] = getattr(inp, key)
            entry = (_options(inp), opts) if inp.type == "COMBO" else (inp.type, opts)
            (optional if inp.optional else required)[inp.name] = entry
        return {"required": required, "optional": optional}

    def run(self, **kwargs):
        return spec.run(**checked(spec, kwargs))

    return type(
        spec.node_id,
        (),
        {
            "INPUT_TYPES": classmethod(input_types),
            "RETURN_TYPES": tuple(o.type for o in spec.outputs),
            "RETURN_NAMES": tuple(o.name for o in spec.outputs),
            "OUTPUT_TOOLTIPS": tuple(o.tooltip for o in spec.outputs),
            "FUNCTION": "run",
            "CATEGORY": spec.category,
            "DESCRIPTION": spec.description,
            "OUTPUT_NODE": spec.output_node,
            "SEARCH_ALIASES": list(spec.search_aliases),
            "run": run,
        },
    )


def v3_class(spec: NodeSpec, io) -> type:
    """A `comfy_api.latest.IO.ComfyNode` subclass for current ComfyUI."""
    custom = {}

    def kind(type_name: str):
        builtin = {
            "IMAGE": io.Image,
            "MASK": io.Mask,
            "INT": io.Int,
            "FLOAT": io.Float,
            "BOOLEAN": io.Boolean,
            "STRING": io.String,
            "COMBO": io.Combo,
        }
        if type_name in builtin:
            return builtin[type_name]
        return custom.setdefault(type_name, io.Custom(type_name))

    def make_input(inp: In):
        kwargs = {"tooltip": inp.tooltip, "optional": inp.optional}
        if inp.advanced:
            kwargs["advanced"] = True
        for key in ("default", "min", "max", "step"):
            if getattr(inp, key) is not None:
                kwargs[key] = getattr(inp, key)
        if inp.type == "COMBO":
            kwargs["options"] = _options(inp)
        try:
            return kind(inp.type).Input(inp.name, **kwargs)
        except TypeError:  # hosts before 2026 have no `advanced` widgets
            kwargs.pop("advanced", None)
            return kind(inp.type).Input(inp.name, **kwargs)

    def define_schema(cls):
        fields = dict(
            node_id=spec.node_id,
            display_name=spec.display_name,
            category=spec.category,
            description=spec.description,
            is_output_node=spec.output_node,
            inputs=[make_input(i) for i in spec.inputs],
            outputs=[kind(o.type).Output(o.name, display_name=o.name, tooltip=o.tooltip) for o in spec.outputs],
        )
        try:
            return io.Schema(**fields, search_aliases=list(spec.search_aliases))
        except TypeError:  # hosts before search aliases
            return io.Schema(**fields)

    def execute(cls, **kwargs):
        return io.NodeOutput(*spec.run(**checked(spec, kwargs)))

    return type(
        spec.node_id,
        (io.ComfyNode,),
        {
            "define_schema": classmethod(define_schema),
            "execute": classmethod(execute),
        },
    )
