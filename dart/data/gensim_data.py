"""Where the offline real texts live: gensim's bundled test data, found without importing gensim (gensim is
installed by setup.sh from PyPI for its data only). dart.data.texts and dart.data.wiki both read from here."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from dart.errors import UnavailableError

GENSIM_PIP = "pip install --no-deps gensim==4.4.0"


def gensim_test_data() -> Path:
    """Folder of gensim's bundled test data, found without importing gensim."""
    spec = importlib.util.find_spec("gensim")
    if spec is None or not spec.submodule_search_locations:
        raise UnavailableError(f"the offline real texts come from the gensim package; install it with `{GENSIM_PIP}`")
    path = Path(spec.submodule_search_locations[0]) / "test" / "test_data"
    if not path.is_dir():
        raise UnavailableError(f"gensim is installed but has no test data at {path}; reinstall with `{GENSIM_PIP}`")
    return path
