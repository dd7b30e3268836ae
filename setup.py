"""Package layout (the metadata is in pyproject.toml).

The library's packages are found automatically; the repository's `training/` folder installs as
`birefnet_training` (never a generic top-level `training`); the editor plug-ins in `editors/` run
inside the editors' own Python, so they ship as data (`birefnet/editors/`), found by
`birefnet krita-plugin`.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["birefnet", "birefnet.*"]), "birefnet_training", "birefnet.editors"],
    package_dir={"birefnet_training": "training", "birefnet.editors": "editors"},
    package_data={"birefnet": ["weights/*.safetensors"], "birefnet.server": ["*.html"], "birefnet.editors": ["**/*"]},
    exclude_package_data={"": ["__pycache__/*", "*.pyc"]},
)
