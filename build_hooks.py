"""Build step (setuptools cmdclass, see pyproject.toml): files the wheel needs from outside the packages.

alembic/ stays at the top of the checkout for the `alembic` command, but a top-level package of
that name would shadow the Alembic library once installed, so the wheel carries the migrations as
api/_migrations. features.example.json goes next to the demo that copies it. An editable install
reads both from the checkout instead (api/database.py and supervisor/demo.py look there second).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# source in the checkout -> destination inside the wheel
EXTRA_FILES = {
    "alembic": "api/_migrations",
    "features.example.json": "supervisor/features.example.json",
}


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for source, target in EXTRA_FILES.items():
            src, dest = ROOT / source, Path(self.build_lib) / target
            if src.is_dir():
                shutil.rmtree(dest, ignore_errors=True)
                shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.py[co]"))
            else:
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
