"""The README lists every environment variable the programs read, and states the naming rule."""

from __future__ import annotations

import re
from pathlib import Path

from edge.config import settings as cluster_settings
from proxy.config import ENV_ALIASES, ENV_CONFIG_FILE, env_name, settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
VARIABLE = re.compile(r"\bMINICDN_[A-Z0-9_]*[A-Z0-9]\b")


def test_readme_states_the_rule_with_examples() -> None:
    assert "`MINICDN_` + the key's path in capitals" in README
    assert "MINICDN_CACHE__L1__BUDGET=128MiB" in README
    assert "MINICDN_POLICY__TARGETED_FIELDS=a,b" in README


def test_readme_lists_every_alias_and_special_variable() -> None:
    table = README[README.index("| variable | what it sets |") :]
    for name in [*ENV_ALIASES, ENV_CONFIG_FILE, "MINICDN_ORIGIN_STUB__LISTEN"]:
        assert f"| `{name}` |" in table, name
    for alias, key in ENV_ALIASES.items():
        assert f"alias of `{env_name(key)}`" in table, alias


def test_every_variable_named_in_the_code_is_documented() -> None:
    """A name in the code is either in the README or a rule name of a real key."""
    rule_names = {env_name(key) for key, _ in [*settings(), *cluster_settings()]}
    for path in [*ROOT.glob("proxy/**/*.py"), *ROOT.glob("edge/**/*.py"), *ROOT.glob("origin_stub/**/*.py")]:
        for name in set(VARIABLE.findall(path.read_text())):
            if name in rule_names:
                continue
            assert f"`{name}`" in README, f"{name} ({path.relative_to(ROOT)}) is not in the README"
