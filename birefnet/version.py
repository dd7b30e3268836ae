"""The toolkit's version, stamped into exports, OpenVINO caches and the server's health answer so each
names the code that made it. pyproject.toml repeats it (the Comfy registry reads it there, statically);
a test keeps the two equal."""

__version__ = "0.1.0"
