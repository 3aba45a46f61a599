"""The text-dataset script's parsing of ``apt-cache dumpavail`` (the embedding itself needs
the model package and runs in the benchmark, not here)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import build_text_dataset as text  # noqa: E402

SAMPLE = """Package: zlib1g
Version: 1:1.2.13
Description: compression library - runtime
 zlib is a library implementing the deflate compression method found
 in gzip and PKZIP.
 .
 This package includes the shared library.
Homepage: http://zlib.net/

Package: zlib1g
Version: 1:1.2.12
Description: an older stanza of the same package

Package: acl
Description: access control list - utilities
 This package contains the getfacl and setfacl utilities.

Package: acl-twin
Description: access control list - utilities
 This package contains the getfacl and setfacl utilities.

Package: nodesc
Version: 1
"""


def test_apt_descriptions_parse_first_stanza_and_long_text():
    items = dict(text.apt_descriptions(SAMPLE))
    assert set(items) == {"zlib1g", "acl", "acl-twin"}  # no description: skipped
    assert items["zlib1g"] == ("zlib1g: compression library - runtime. zlib is a library "
                               "implementing the deflate compression method found in gzip "
                               "and PKZIP. This package includes the shared library.")
    assert items["acl"].startswith("acl: access control list - utilities. This package")
    assert [p for p, _ in text.apt_descriptions(SAMPLE)] == ["acl", "acl-twin", "zlib1g"]


def test_identical_texts_are_kept_once():
    dup = SAMPLE + "\nPackage: acl\nDescription: access control list - utilities\n"
    assert len(text.apt_descriptions(dup)) == 3
    same = "Package: a\nDescription: x\n\nPackage: a\nDescription: x\n"
    assert text.apt_descriptions(same) == [("a", "a: x.")]
