"""Every module's documentation renders with the real ansible-doc (DOCUMENTATION, EXAMPLES and RETURN
parse as YAML), and every role's meta/argument_specs.yml parses: a stray ': ' in a plain YAML scalar
breaks both silently until someone asks for the docs or a role validates its arguments."""
import json
import re
import subprocess

import pytest
import yaml

from testlib import REPO, VENV_BIN, ansible_env

MODULES = sorted(p.stem for p in (REPO / "plugins" / "modules").glob("*.py"))


@pytest.mark.parametrize("module", MODULES)
def test_module_documentation_renders(module):
    name = "fleetsplit.k0s." + module
    p = subprocess.run([str(VENV_BIN / "ansible-doc"), "--json", name], capture_output=True, text=True,
                       env=ansible_env(), timeout=120, check=False)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)[name]
    assert doc["doc"]["short_description"] and doc["doc"]["options"]
    assert doc["examples"].strip() and yaml.safe_load(doc["examples"])
    assert doc["return"]


@pytest.mark.parametrize("role", sorted(p.parent.parent.name for p in (REPO / "roles").glob("*/meta/argument_specs.yml")))
def test_role_argument_specs_parse(role):
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    assert specs["argument_specs"]["main"]["options"] is not None


def test_security_doc_names_only_tests_that_exist():
    """docs/security.md's table of hostile inputs names the test covering each; a renamed or deleted test
    must not leave the table vouching for nothing."""
    text = (REPO / "docs" / "security.md").read_text()
    refs = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    assert len(refs) >= 20, refs
    for path, name in refs:
        source = (REPO / path).read_text()
        assert re.search(r"^def %s\(" % name, source, re.M), "%s::%s named in docs/security.md does not exist" % (path, name)
