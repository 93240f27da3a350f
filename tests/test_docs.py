"""The README quickstart works when pasted, `make run`'s script runs, docs match the code."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema

from conftest import ROOT
from qlite import envelope

README = (ROOT / "README.md").read_text()


def quickstart() -> str:
    block = README.split("<!-- quickstart")[1].split("<!-- /quickstart -->")[0]
    return block.split("```sh\n", 1)[1].rsplit("```", 1)[0]


def test_the_readme_quickstart_runs_and_shows_the_result(seaweed_target, tmp_path):
    # The export lines name a placeholder bucket and server; the test's environment holds the
    # real ones, so drop them and run every other line as written.
    script = "\n".join(line for line in quickstart().splitlines()
                       if not line.startswith("export "))
    env = {**seaweed_target.env,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout.strip().splitlines()[-1])
    assert (status["state"], status["result"]) == ("succeeded", 5)


def test_make_run_script_shows_the_demo_jobs_complete(tmp_path):
    result = subprocess.run([sys.executable, "scripts/demo.py", "--once", "--data",
                             str(tmp_path / "dev")], cwd=ROOT, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"math\.add\s+succeeded\s+attempts=1\s+5", result.stdout)
    assert re.search(r"demo\.flaky\s+succeeded\s+attempts=2", result.stdout)
    assert "export AWS_ENDPOINT_URL_S3=" in result.stdout
    assert "qlite status ID --json" in result.stdout


def test_envelopes_the_producer_writes_match_the_published_schema():
    schema = json.loads((ROOT / "docs" / "envelope.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for env in (envelope.make("math.add", [1, 2]),
                envelope.make("a.b", kwargs={"x": 1}, queue="q", key="k", priority=3,
                              max_attempts=2, timeout=1.5, not_before=2e9, expires_at=2.1e9,
                              webhook="https://example.com/h", on_success="a.c",
                              on_failure="a.d", meta={"m": 1})):
        jsonschema.validate(env, schema)
    assert envelope.ID_RE.pattern == schema["properties"]["id"]["pattern"]


def test_docs_link_targets_exist():
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", doc.read_text()):
            if not target.startswith("http"):
                assert (doc.parent / target).exists(), f"{doc.name} links {target}"


def test_files_the_docs_and_code_comments_name_exist():
    named = re.compile(r"(?<![\w/.])((?:qlite|tests|docs|deploy|scripts|bench)/[\w/.\-]+?"
                       r"\.(?:py|sql|md|json|html|toml|yml|sh))\b")
    texts = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
             *sorted((ROOT / "qlite").rglob("*.py"))]
    for path in texts:
        for target in named.findall(path.read_text()):
            assert (ROOT / target).exists(), f"{path.relative_to(ROOT)} names {target}"
    assert not [p for p in texts if "DESIGN.md" in p.read_text()]  # it is docs/design.md


def test_ci_runs_make_check_which_lints_then_tests():
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("make check")
    check = re.search(r"^check: (.*?)(?: ##|$)", (ROOT / "Makefile").read_text(), re.M)
    assert check and check.group(1).split() == ["lint", "test"]


def test_the_python_examples_of_the_concept_pages_run(seaweed_target):
    for page in ("scheduling.md", "queues.md", "control.md", "builtins.md"):
        text = (ROOT / "docs" / page).read_text()
        blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", text,
                                                         flags=re.S)]
        assert blocks, page
        for block in blocks:
            exec(compile(block, f"docs/{page}", "exec"), {"__name__": "docs_example"})  # noqa: S102
