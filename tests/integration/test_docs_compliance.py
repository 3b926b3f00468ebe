"""test_docs_compliance.py - docs/compliance.md stays true.

Every test the compliance table names must exist (a pytest function in
tests/integration/ or a cmocka test in tests/unit/), so a renamed or deleted
test cannot leave the table claiming a proof that is gone.
"""
import glob
import os
import re

from conftest import ROOT


def defined_tests():
    names = set()
    for path in glob.glob(os.path.join(ROOT, "tests", "integration", "test_*.py")):
        with open(path, encoding="utf-8") as f:
            names.update(re.findall(r"^def (test_\w+)", f.read(), re.M))
    for path in glob.glob(os.path.join(ROOT, "tests", "unit", "test_*.c")):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        names.update(re.findall(r"cmocka_unit_test\w*\(\s*(\w+)", text))
        names.update(re.findall(r"^static void (\w+)\(void \*\*", text, re.M))
        # table-driven cases: CASE(name, ...) defines the test function
        names.update(re.findall(r"^CASE\((\w+),", text, re.M))
    return names


def test_every_test_named_in_compliance_md_exists():
    with open(os.path.join(ROOT, "docs", "compliance.md"), encoding="utf-8") as f:
        table = f.read()
    cited = set()
    for cell in re.findall(r"`([a-z0-9_]+)(?:\[[^\]]*\])?`", table):
        if "_" not in cell:
            continue  # a word like `invalidate`, not a test name
        if cell.startswith("test_") or re.match(r"^(rfc|xep|tls|xmlstream|scram|serializer|"
                                                 r"builder|jid|buf|arena|parse|billion|"
                                                 r"invalid|nul|queries|mutation|node|copy|"
                                                 r"refcount|deep|stanza)", cell):
            cited.add(cell)
    missing = sorted(cited - defined_tests())
    assert not missing, "docs/compliance.md names tests that do not exist: %s" % missing
