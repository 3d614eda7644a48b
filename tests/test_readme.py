"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def test_readme_has_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the files an example saves land there
    code = BLOCKS[index]
    if "import torch" in code:
        pytest.importorskip("torch")
        code = BLOCKS[0] + code  # the torch example continues the first one
    if "onnxruntime" in code:
        pytest.importorskip("onnxruntime")
    exec(compile(code, f"README.md example {index}", "exec"), {})
    assert capsys.readouterr().out or "print" not in code
