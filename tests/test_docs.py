"""The commands README.md and docs/*.md show still parse: a flag renamed or removed in the CLI leaves no doc telling users
to type it (what the docs-as-written QA walk checks by hand, kept here so the drift cannot come back)."""

from __future__ import annotations

import re
from pathlib import Path

from sdopt.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# `sdopt COMMAND` and the words after it on its line, up to a backtick, `;`, `&`, a pipe or a comment (a word that
# starts with | or #: `[--precision fp32|fp16]` is one word); a shell line continued with a backslash is one line
SDOPT_COMMAND = re.compile(r"\bsdopt ([a-z][a-z-]+)((?:[ ]+[^\s`;&|#][^\s`;&]*)*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z0-9-]*)")
MEASURE_SCRIPT = re.compile(r"\bpython3? (measure/[\w/]+\.py)((?:[ ]+[^\s`;&|#][^\s`;&]*)*)")


def _joined(path: Path) -> str:
    return re.sub(r"\\\n\s*", " ", path.read_text())


def test_every_flag_the_docs_give_an_sdopt_command_exists():
    commands = build_parser().commands
    unknown, checked = [], 0
    for doc in DOCS:
        for found in SDOPT_COMMAND.finditer(_joined(doc)):
            command, words = found.groups()
            if command not in commands:  # prose: "sdopt keeps ...", "sdopt never ..."
                continue
            for flag in FLAG.findall(words):
                checked += 1
                if flag not in commands[command]._option_string_actions:
                    unknown.append(f"{doc.relative_to(ROOT)}: sdopt {command} {flag}")
    assert checked > 200, "the docs' commands were not found: has the pattern stopped matching them?"
    assert not unknown, f"docs name flags their command does not take: {unknown}"


def test_every_measure_script_the_docs_run_exists_and_takes_the_flags_shown():
    """docs/*.md give the commands that measured their figures (python measure/X.py --flag ...): a script renamed, or
    a flag of one, leaves the figure unreproducible as written. Flags are looked for in the script's own source, where
    argparse declares them, so no script is run."""
    missing, shown = [], 0
    for doc in DOCS:
        for found in MEASURE_SCRIPT.finditer(_joined(doc)):
            script, words = found.groups()
            shown += 1
            source = ROOT / script
            if not source.is_file():
                missing.append(f"{doc.relative_to(ROOT)}: {script}")
                continue
            declared = source.read_text()
            missing += [f"{doc.relative_to(ROOT)}: {script} {flag}" for flag in FLAG.findall(words) if f'"{flag}"' not in declared]
    assert shown, "no measure/ command found in the docs: has the pattern stopped matching them?"
    assert not missing, f"docs run measure/ scripts or flags that are not there: {missing}"


def test_every_pip_extra_and_make_target_the_docs_name_exists():
    """`pip install 'sdopt[serve]'` with an extra pyproject.toml no longer declares installs sdopt without it, and pip
    only warns; a `make` target that is gone fails at once, but only once a user has typed it."""
    import tomllib

    extras = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.MULTILINE))
    named_extras = {(doc, extra) for doc in DOCS for group in re.findall(r"\bsdopt\[([\w,-]+)\]", doc.read_text())
                    for extra in group.split(",")}
    named_targets = {(doc, target) for doc in DOCS for target in re.findall(r"`make ([\w-]+)", doc.read_text())}
    shell_blocks = {doc: "\n".join(re.findall(r"^```bash\n(.*?)^```", doc.read_text(), re.MULTILINE | re.DOTALL)) for doc in DOCS}
    named_targets |= {(doc, target) for doc, block in shell_blocks.items() for target in re.findall(r"^make ([\w-]+)", block, re.MULTILINE)}
    absent = [f"{doc.relative_to(ROOT)}: sdopt[{extra}]" for doc, extra in named_extras if extra not in extras]
    absent += [f"{doc.relative_to(ROOT)}: make {target}" for doc, target in named_targets if target not in targets]
    assert named_extras and named_targets, "no extra or make target found in the docs: has the pattern stopped matching them?"
    assert not absent, f"docs name pip extras or make targets that do not exist: {sorted(absent)}"
