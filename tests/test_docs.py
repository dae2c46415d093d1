"""The docs and comments name only files that exist, and the README opens with the two commands CI runs."""

import re
import subprocess

import pytest
from conftest import REPO

# a repo path as the docs and comments write it: a top-level folder, then a file name with an extension
MENTION = re.compile(
    r"(?<![\w/.$<{-])((?:jaxgpt|tools|bench|configs|tests|docs|notebooks|data)/[\w./-]*\w\."
    r"(?:py|md|sh|json|jsonl|pbin|idx|ipynb|yaml|txt|npy))(?![\w/])"
)
GENERATED = ("data/packed/",)  # what getting_started.sh makes; a fresh clone has none of it
TEXT = (".py", ".md", ".sh", ".toml", ".yaml", ".txt", "run")


def tracked_text_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode:
        pytest.skip("not a git checkout: no list of the tracked files")
    names = listed.stdout.split()
    return [n for n in names if n.endswith(TEXT) and not n.startswith("tests/data/")]


def test_every_file_named_in_docs_and_comments_exists():
    missing = []
    for name in tracked_text_files():
        text = (REPO / name).read_text(encoding="utf-8")
        for lineno, line in enumerate(text.splitlines(), 1):
            for path in MENTION.findall(line):
                if not path.startswith(GENERATED) and not (REPO / path).exists():
                    missing.append(f"{name}:{lineno}: {path}")
    assert not missing, "\n".join(missing)


def test_the_readme_opens_with_the_main_job_and_the_ci_test_command():
    readme = (REPO / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S)[1].splitlines()
    commands = [line.split("#")[0].strip() for line in first_block if line.strip()]
    assert commands[0] == "bash getting_started.sh"
    ci = (REPO / ".ci" / "run").read_text()
    install, tests = commands[1].split(" && .venv/bin/python -m pytest")
    assert install in ci and "python -m pytest" + tests in ci, (commands[1], ci)
