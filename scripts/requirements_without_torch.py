"""Print the project's runtime and dev requirements without the torch pin (for .venv-ptychi)."""

import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
for req in project["dependencies"] + project["optional-dependencies"]["dev"]:
    if not req.replace(" ", "").startswith("torch=="):
        print(req)
