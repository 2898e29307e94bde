"""The README is the front door and docs/ holds the rest: the parts generated from code must match the code."""

import re
from pathlib import Path

from accounts.roles import PERMISSION_DESCRIPTIONS, ROLE_PERMISSIONS, Role

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
API_DOC = (ROOT / "docs" / "api.md").read_text()


def test_role_matrix_in_the_api_doc_matches_the_code():
    for perm, description in PERMISSION_DESCRIPTIONS.items():
        marks = " | ".join("✓" if perm in ROLE_PERMISSIONS[role] else "" for role in Role)
        row = f"| `{perm}` | {description} | {marks} |"
        assert row.replace("|  |", "| |") in API_DOC.replace("|  |", "| |"), f"docs/api.md role matrix row is stale: {row}"


def test_readme_quick_start_is_the_two_commands():
    quick_start = README.split("## Quick start", 1)[1].split("##", 1)[0]
    assert "make run" in quick_start and "make test" in quick_start


def test_readme_stays_a_front_door():
    assert len(README.splitlines()) <= 250


def test_readme_links_into_docs_resolve():
    targets = re.findall(r"\]\((docs/[^)#\s]+)", README)
    assert any(target.endswith(".md") for target in targets)
    for target in targets:
        assert (ROOT / target).is_file(), f"README links to {target}, which does not exist"
