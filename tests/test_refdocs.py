"""docs/model-toml.md and docs/edgert-toml.md against the structs the files are decoded into: every
key documented with its meaning, no key documented that does not exist, and the committed files
exactly what scripts/gen-docs writes now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgert.config import ModelFile
from edgert.refdocs import FILES, UNDOCUMENTED, RefFile, documented, keys, meaning_paths, render
from edgert.schema import Table
from edgert.settings import EdgertFile, ServeSection

REPO = Path(__file__).resolve().parents[1]
IDS = [ref.name for ref in FILES]


@pytest.mark.parametrize("ref", FILES, ids=IDS)
def test_the_committed_docs_are_what_the_structs_give(ref: RefFile) -> None:
    committed = (REPO / ref.doc).read_text(encoding="utf-8")
    assert committed == render(ref), f"{ref.doc} is out of date: run scripts/gen-docs"


@pytest.mark.parametrize("ref", FILES, ids=IDS)
def test_every_key_has_a_meaning_and_every_meaning_a_key(ref: RefFile) -> None:
    paths = set(meaning_paths(ref.struct))  # a tagged union's variants share their tag key
    assert sorted(paths - set(ref.meanings)) == [], "add them to edgert/keydocs.py"
    assert sorted(set(ref.meanings) - paths) == [], "keys that no longer exist"


@pytest.mark.parametrize("ref", FILES, ids=IDS)
def test_the_docs_list_exactly_the_keys_that_exist(ref: RefFile) -> None:
    listed = documented((REPO / ref.doc).read_text(encoding="utf-8"))
    exist = keys(ref.struct)
    assert sorted(exist - listed) == [], "keys missing from the docs"
    assert sorted(listed - exist) == [], "the docs name keys that do not exist"


def test_a_key_the_docs_name_but_the_structs_lack_is_found() -> None:
    text = render(FILES[1])
    row = "| `queue_size` |"
    planted = text.replace(row, "| `queue_depth` | integer | `1` |   | made up |\n" + row, 1)
    assert documented(planted) - keys(EdgertFile) == {("serve", "queue_depth")}
    dropped = "\n".join(line for line in text.splitlines() if not line.startswith(row))
    assert keys(EdgertFile) - documented(dropped) == {("serve", "queue_size")}


class PlantedSection(Table, forbid_unknown_fields=True, frozen=True):
    """``[planted]``: a table another change adds (a name no real table will take)."""

    listen: str = ""


class GrownServe(ServeSection, forbid_unknown_fields=True, frozen=True):
    planted_backend: str = "onnxruntime"


class GrownFile(EdgertFile, forbid_unknown_fields=True, frozen=True):
    serve: GrownServe = GrownServe()
    planted: PlantedSection = PlantedSection()


def test_a_new_key_or_table_in_the_structs_is_picked_up_and_needs_a_meaning() -> None:
    assert {("planted", "listen"), ("serve", "planted_backend")} <= keys(GrownFile)
    ref = RefFile("edgert.toml", GrownFile, FILES[1].meanings, FILES[1].doc, "")
    missing = [p for p in meaning_paths(GrownFile) if p not in ref.meanings]
    assert missing == ["serve.planted_backend", "planted.listen"]
    text = render(ref)
    assert "## `[planted]`" in text
    assert f'| `listen` | string | `""` |   | {UNDOCUMENTED} |' in text
    assert documented(text) == keys(GrownFile)


def test_types_defaults_and_allowed_values_come_from_the_structs() -> None:
    text = render(FILES[0])
    assert '| `precision` | string | `"fp32"` | `"fp16"`, `"fp32"`, `"int8"` |' in text
    assert "| `optimization_level` | integer | unset | 0 to 5 |" in text
    assert "| `max_streams` | integer | `256` | >= 1 |" in text
    assert '## `[preprocess]` with `kind = "audio"`' in text
    assert "| `rate` | integer | required | >= 1 |" in text
    assert ("dims", "<name>") in keys(ModelFile)
    assert ("inputs.<name>", "kind") in keys(ModelFile)
    assert "## `[[sources]]`" in render(FILES[1])


def test_gen_docs_check_passes_on_the_committed_docs() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen-docs"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
