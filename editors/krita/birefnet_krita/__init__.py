"""BiRefNet for Krita: Remove background (a transparency mask), Select subject (a soft selection) and
Cut out (a new layer), computed by a local `birefnet serve`. Needs only Krita's own Python and Qt."""

from krita import DockWidgetFactory, DockWidgetFactoryBase, Krita

from .docker import BiRefNetDocker
from .extension import BiRefNetExtension

Krita.instance().addExtension(BiRefNetExtension(Krita.instance()))
Krita.instance().addDockWidgetFactory(
    DockWidgetFactory("birefnet_docker", DockWidgetFactoryBase.DockPosition.DockRight, BiRefNetDocker)
)
