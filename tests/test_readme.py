"""The README's promises: its Python example runs verbatim (extracted from README.md) on CPU,
its test command is the one CI runs, and it reads as a user's document."""

import os
import re
import subprocess
import sys

REPO_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
README = os.path.join(REPO_DIR, "README.md")
CI_SCRIPT = os.path.join(REPO_DIR, ".ci", "run")
EXAMPLE_SECTION = "## Python API"
TEST_COMMAND = 'python -m pytest -q -m "not slow" -n 2 --dist loadfile tests'
EXAMPLE_TIMEOUT_S = 300


def readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def section(text: str, heading: str) -> str:
    start = text.index(heading + "\n")
    end = text.find("\n## ", start + len(heading))
    return text[start:end if end >= 0 else len(text)]


def test_readme_python_example_runs_verbatim(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", section(readme(), EXAMPLE_SECTION), re.S)
    assert len(blocks) == 2, "the LLM example, then the generator protocol"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}   # one CPU device: a laptop
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=REPO_DIR)
    run = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=EXAMPLE_TIMEOUT_S)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    generated = [line for line in lines if line.split(" ")[0] in ("stop", "length")]
    assert len(generated) == 2, run.stdout
    assert all(int(line.split(" ")[1]) >= 1 for line in generated), run.stdout
    assert any(line.startswith("Hello done:") for line in lines), run.stdout
    assert any(line.startswith("World done:") for line in lines), run.stdout
    assert any(line.startswith("Hello + ") for line in lines), run.stdout


def test_readme_commands_and_tone():
    text = readme()
    assert f"```bash\n{TEST_COMMAND}\n```" in text
    with open(CI_SCRIPT, encoding="utf-8") as f:             # CI runs the README's command
        last_line = f.read().strip().splitlines()[-1]
    assert last_line == TEST_COMMAND.replace("python ", "python3 ", 1), last_line
    assert "python run.py" in text and "python -m grok.demo" in text
    for internal in ("the issue", "../shared/spec", "spec/"):
        assert internal not in text, internal
