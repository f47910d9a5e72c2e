"""The documentation in ``docs/``: it parses cleanly, and what cites it finds it.

The library's comments cite the wire contract as ``docs/protocol.rst §N`` (the same
numbers as the team's ``PROTOCOL.md``, which the package does not ship, so no
citation names it). A renumbered or deleted section would leave those
citations pointing nowhere without anything failing, so this test resolves every one of
them against the sections that ``docs/protocol.rst`` really has, as docutils parses it.
The parse itself is the real thing, with warnings reported: a broken table, an unknown
directive or a dangling link fails here rather than on a reader's screen.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docutils.core
import docutils.nodes
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PROTOCOL = DOCS / "protocol.rst"
LIBRARY_PACKAGES = ("chttp_core", "chttp_client", "chttp_server")
#: docutils' level for a WARNING; INFO (1) is only "a target is not referenced".
_WARNING = 2

#: A citation of the contract: the document's name, then one or more section numbers
#: ("docs/protocol.rst §2.3", "``PROTOCOL.md`` §1 and §4", "PROTOCOL.md §2, §5").
_CITATION = re.compile(
    r"(?:(?:docs/)?protocol\.rst|PROTOCOL\.md)`{0,2}\s*"
    r"(§\s*\d+(?:\.\d+)*(?:\s*(?:,|and|or)\s*§\s*\d+(?:\.\d+)*)*)"
)
_SECTION_NUMBER = re.compile(r"§\s*(\d+(?:\.\d+)*)")
#: A section reference inside the docs; "RFC 9110 §5.6.7" is another document's.
_DOCS_REFERENCE = re.compile(r"(RFC\s+\d+\s*)?§\s*(\d+(?:\.\d+)*)")
#: A numbered section title: "2. What the receiver does…", "2.3 Answering a known id".
_NUMBERED_TITLE = re.compile(r"(\d+(?:\.\d+)*)\.?\s")


def parse(text: str, source: str) -> tuple[docutils.nodes.document, str]:
    """Parse reStructuredText with docutils; return the tree and every warning or error."""
    stream = io.StringIO()
    tree = docutils.core.publish_doctree(
        text,
        source_path=source,
        settings_overrides={
            "report_level": _WARNING,   # report warnings and worse …
            "halt_level": 5,            # … all of them, instead of stopping at the first
            "warning_stream": stream,
            "file_insertion_enabled": False,
            "raw_enabled": False,
        },
    )
    return tree, stream.getvalue()


def section_numbers(tree: docutils.nodes.document) -> dict[str, docutils.nodes.section]:
    """The numbered sections of a parsed document, by number ("2", "2.3")."""
    numbered = {}
    for section in tree.findall(docutils.nodes.section):
        match = _NUMBERED_TITLE.match(section[0].astext())
        if match:
            numbered[match.group(1)] = section
    return numbered


def cited_sections(text: str) -> list[str]:
    """Every section number that ``text`` cites from the wire contract."""
    return [
        number
        for citation in _CITATION.finditer(text)
        for number in _SECTION_NUMBER.findall(citation.group(1))
    ]


def _library_citations() -> list[tuple[str, str]]:
    """``(file:line, number)`` for every citation in the library's source."""
    found = []
    for package in LIBRARY_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            for citation in _CITATION.finditer(text):
                where = f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, citation.start()) + 1}"
                found += [(where, n) for n in _SECTION_NUMBER.findall(citation.group(1))]
    return found


@pytest.fixture(scope="module")
def protocol_sections() -> dict[str, docutils.nodes.section]:
    # Whether it parses cleanly is test_rst_parses_without_warnings's question.
    tree, _problems = parse(PROTOCOL.read_text(encoding="utf-8"), str(PROTOCOL))
    return section_numbers(tree)


#: The docs and the README (the front door: a broken heading there is a bug too).
_RST_FILES = [*sorted(DOCS.glob("*.rst")), ROOT / "README.rst"]


def test_the_documents_exist():
    assert {path.name for path in _RST_FILES} >= {"index.rst", "protocol.rst", "architecture.rst"}


@pytest.mark.parametrize("path", [pytest.param(path, id=path.name) for path in _RST_FILES])
def test_rst_parses_without_warnings(path):
    _tree, problems = parse(path.read_text(encoding="utf-8"), str(path))
    assert problems == "", f"docutils reported, for {path.name}:\n{problems}"


@pytest.mark.parametrize("path", [pytest.param(path, id=path.name) for path in _RST_FILES])
def test_relative_links_reach_files_of_the_repository(path):
    tree, _problems = parse(path.read_text(encoding="utf-8"), str(path))
    links = [node["refuri"] for node in tree.findall(docutils.nodes.reference) if "refuri" in node]
    relative = [uri for uri in links if not urlsplit(uri).scheme and not uri.startswith("#")]
    missing = [uri for uri in relative if not (path.parent / urlsplit(uri).path).exists()]
    assert missing == []


def test_protocol_keeps_the_five_sections_of_protocol_md(protocol_sections):
    top = sorted(number for number in protocol_sections if "." not in number)
    assert top == ["1", "2", "3", "4", "5"]


def test_every_numbered_protocol_section_has_a_stable_label(protocol_sections):
    """Links use explicit ``protocol-…`` labels, which survive a retitled section."""
    unlabelled = [
        number for number, section in protocol_sections.items()
        if not any(name.startswith("protocol-") for name in section["names"])
    ]
    assert unlabelled == []


def test_every_library_citation_names_an_existing_section(protocol_sections):
    citations = _library_citations()
    assert citations, "no citation of docs/protocol.rst or PROTOCOL.md found in the library"
    dangling = sorted({f"{where} cites §{number}" for where, number in citations
                       if number not in protocol_sections})
    assert dangling == []


@pytest.mark.parametrize("path", [pytest.param(path, id=path.name) for path in _RST_FILES])
def test_section_references_in_the_docs_name_protocol_sections(path, protocol_sections):
    text = path.read_text(encoding="utf-8")
    references = [match.group(2) for match in _DOCS_REFERENCE.finditer(text)
                  if match.group(1) is None]
    dangling = sorted({number for number in references if number not in protocol_sections})
    assert dangling == []


# -- the checks above can fail ---------------------------------------------------------


def test_a_broken_table_is_reported():
    broken = (
        "Title\n=====\n\n"
        ".. list-table::\n   :header-rows: 1\n\n"
        "   * - status\n     - type\n"
        "   * - 400\n"  # a row with one cell of two
    )
    _tree, problems = parse(broken, "<broken>")
    assert "ERROR" in problems and "list-table" in problems


def test_a_dangling_link_is_reported():
    _tree, problems = parse("See `nowhere`_.\n", "<dangling>")
    assert 'Unknown target name: "nowhere"' in problems


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        pytest.param("see docs/protocol.rst §2.3.", ["2.3"], id="subsection"),
        pytest.param("``../shared/PROTOCOL.md`` §1 and §4", ["1", "4"], id="rst-literal-list"),
        pytest.param("PROTOCOL.md §2, last paragraph; §5", ["2"], id="stops-at-prose"),
        pytest.param("RFC 9110 §5.6.7", [], id="another-document"),
        pytest.param("docs/protocol.rst\n    §6", ["6"], id="wrapped"),
        pytest.param("(protocol.rst §3.1)", ["3.1"], id="without-docs-prefix"),
    ],
)
def test_citations_are_recognised(text: str, numbers: list[Any]):
    assert cited_sections(text) == numbers


def test_a_missing_section_is_dangling(protocol_sections):
    assert "6" not in protocol_sections
    assert "4.1" in protocol_sections and "4.9" not in protocol_sections


# -- one name for the contract ---------------------------------------------------------

#: What users read: the library's source, the shipped examples and the README.
_CITING_FILES = sorted(
    [path for package in (*LIBRARY_PACKAGES, "examples") for path in (ROOT / package).rglob("*.py")]
    + [ROOT / "README.rst"]
)


def test_the_library_cites_the_contract_by_its_path_in_the_package():
    """``PROTOCOL.md`` is the team's working copy, not in the package: a user who reads
    a citation of it finds nothing, so every citation names ``docs/protocol.rst``."""
    stale = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _CITING_FILES
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "PROTOCOL.md" in line
    ]
    assert stale == []


def test_the_readme_points_users_to_the_protocol_document():
    tree, _problems = parse((ROOT / "README.rst").read_text(encoding="utf-8"), "README.rst")
    links = {node["refuri"] for node in tree.findall(docutils.nodes.reference) if "refuri" in node}
    assert "docs/protocol.rst" in links


def test_the_package_docstring_cites_sections_that_exist(protocol_sections):
    import chttp_server

    cited = cited_sections(chttp_server.__doc__ or "")
    assert cited and all(number in protocol_sections for number in cited)
