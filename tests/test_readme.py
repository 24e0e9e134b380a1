"""The README keeps exactly two commands, and CI runs its test command verbatim."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def two_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)


def test_readme_has_a_main_job_and_a_test_command():
    main_job, test_command = two_commands()
    assert "\n" not in main_job and "\n" not in test_command
    assert "l2o quickstart" in main_job and "pytest" in test_command
    assert main_job.startswith("python3 -m venv") and test_command.startswith("python3 -m venv")


def test_ci_runs_the_readme_test_command_unchanged():
    _, test_command = two_commands()
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_command in ci_lines
