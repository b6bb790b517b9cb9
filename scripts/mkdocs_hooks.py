"""mkdocs hook (mkdocs.yml `hooks:`): the figures the docs show live outside docs/, where the benches and
`python -m dart.tables` write them (benchmarks/...). A page links a figure relative to itself, e.g.
`../benchmarks/decode/smollm2_135m/speedup.png` from docs/performance.md, which is also the right path on GitHub.

mkdocs only knows files under docs_dir, so such a link would be "not found" (a warning, fatal under --strict). This
hook adds every figure under FOLDERS to the build as a file whose source path is `../<path>` (exactly what mkdocs
resolves the page's link to) and whose destination is `site/<path>`. mkdocs then validates the link (a missing
figure still fails --strict), rewrites it to the copy and copies the file. Nothing is copied into docs/."""
from __future__ import annotations

import os
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

FOLDERS = ("benchmarks",)  # relative to the repository root (the folder of mkdocs.yml)
SUFFIXES = (".png", ".svg", ".jpg", ".jpeg", ".gif")


def on_files(files, config):
    docs = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    for folder in FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if not path.is_file() or path.suffix.lower() not in SUFFIXES:
                continue
            rel = path.relative_to(root).as_posix()
            src_uri = Path(os.path.relpath(path, docs)).as_posix()  # ../benchmarks/... with docs_dir: docs
            # INCLUDED: mkdocs' default exclusion of dot paths (".*") would otherwise match the leading "../"
            files.append(File(src_uri, str(docs), config["site_dir"], config["use_directory_urls"], dest_uri=rel,
                              inclusion=InclusionLevel.INCLUDED))
    return files
