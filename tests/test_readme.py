"""The README's examples run as written. Each section named here has its Python blocks
executed in order, in one namespace, in a scratch directory."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ["Use", "From FAISS", "With LangChain", "With LlamaIndex", "Text memory",
            "Sharded store on Ray", "Splat memory",
            "Durable stores", "Memory tiers", "Approximate search: HRM2"]


def blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    body = text[start : end if end > 0 else len(text)]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


@pytest.mark.parametrize("section", SECTIONS)
def test_readme_examples_run(section, tmp_path, monkeypatch):
    code = blocks(section)
    assert code, f"no python example under '## {section}'"
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    for i, block in enumerate(code):
        block = block.replace("/tmp/", str(tmp_path) + os.sep)
        exec(compile(block, f"README.md ({section}, block {i})", "exec"), scope)  # noqa: S102


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_the_server_example_runs_against_a_real_server(tmp_path):
    pytest.importorskip("qdrant_client")
    pytest.importorskip("fastapi")
    from .serving import Server

    with Server(tmp_path / "srv", "--api-key", "k") as srv:
        scope: dict = {"KEY": "k", "vec": [0.1] * 384}
        for i, block in enumerate(blocks("Server")):
            block = block.replace("http://localhost:6333", srv.url)
            exec(compile(block, f"README.md (Server, block {i})", "exec"), scope)  # noqa: S102
        assert [p.id for p in scope["client"].query_points("docs", query=[0.1] * 384).points] \
            == [7]


def test_every_python_example_is_in_a_tested_section():
    total = len(re.findall(r"```python\n", README.read_text()))
    assert total == sum(len(blocks(s)) for s in [*SECTIONS, "Server"])


def test_the_readme_cites_nothing_outside_the_repository():
    text = README.read_text()
    assert "../" not in text and "SPEC.md" not in text
