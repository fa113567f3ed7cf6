"""The zoo fixture script, imported once for the zoo tests (its constants and key mappings).

``scripts/make_zoo_fixtures.py`` made the committed fixtures; importing it (it needs no torch
at import time) lets the tests rebuild models with exactly the script's reduced sizes.
"""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "zoo"

_spec = importlib.util.spec_from_file_location("make_zoo_fixtures",
                                               ROOT / "scripts" / "make_zoo_fixtures.py")
mzf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mzf)
