"""Every module of ours imports first, on its own: an import cycle shows only when the
cycle's module is the first imported (`import relay.store.database` once failed that way while
every test passed, the models having been imported first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("relay", "filters", "blocklist")

# In one fresh interpreter: third-party imports stay cached, ours are dropped each time.
CHECK = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for mod in [m for m in sys.modules if m.split(".")[0] in {packages!r}]:
        del sys.modules[mod]
    try:
        importlib.import_module(name)
    except Exception as e:
        failed.append(f"{{name}}: {{type(e).__name__}}: {{e}}")
print("\\n".join(failed))
"""


def modules() -> list[str]:
    out = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            if "migrations" in rel.parts or rel.name == "__main__":
                continue
            out.append(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    return out


def test_every_module_imports_on_its_own() -> None:
    names = modules()
    assert "relay.store.database" in names and "relay.store.tables" in names
    done = subprocess.run([sys.executable, "-c", CHECK.format(packages=set(PACKAGES)), *names],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""
