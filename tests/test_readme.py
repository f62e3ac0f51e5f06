"""The README's Python example runs and prints what the README says it prints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_readme_python_example_prints_what_it_shows() -> None:
    text = README.read_text()
    section = text[text.index("## Use it from Python") :]
    m = re.search(r"```python\n(.*?)```\s*\nprints\s*\n\s*```text\n(.*?)```", section, re.S)
    assert m, "the README's Python example and its output"
    code, expected = m.groups()
    src = str(README.parent / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == expected
    assert "acknowledged INTID 8192" in p.stdout  # an MSI landed and was acknowledged
