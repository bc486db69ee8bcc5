"""Prompt files: one prompt per line, blank lines and ``#`` comments ignored.

One reader for every command that takes a prompt set (bench --prompts, quantize
--calibration-prompts), so the format and its errors are the same everywhere.
"""

from __future__ import annotations

from pathlib import Path

from sdopt.errors import SdoptError


def read_prompts(source: str | Path | list[str] | tuple[str, ...], what: str = "prompt file") -> list[str]:
    """The prompts of a file, or of a list (stripped, blanks dropped); empty is an error."""
    if isinstance(source, (list, tuple)):
        prompts = [p.strip() for p in source if p.strip()]
        if not prompts:
            raise SdoptError(f"the {what} list is empty: give at least one prompt")
        return prompts
    if not str(source).strip():  # Path("") is ".", which was said to be "a folder"
        raise SdoptError(f"{what} {str(source)!r}: no file named; give a text file with one prompt per line")
    path = Path(source)
    if path.is_dir():  # not "does not exist": it does
        raise SdoptError(f"{what} {path} is a folder: give a text file with one prompt per line")
    if not path.exists():  # a pipe is read as a file (--prompts <(grep cat prompts.txt), /dev/stdin): it was "does not exist"
        raise SdoptError(f"{what} {path} does not exist: give a text file with one prompt per line")
    data = path.read_bytes()  # read once: a pipe (--prompts <(...)) cannot be read again
    try:
        # Not the locale's: a prompt file written on another machine reads the same. utf-8-sig: Windows' Notepad and
        # PowerShell's `-Encoding utf8` begin the file with a BOM, which made its first line, a '# comment', a prompt.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:  # an image or other binary file given by mistake
        if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # "a text file" is what its writer thought it made
            raise SdoptError(f"{what} {path} is UTF-16 text (Windows PowerShell's > and Out-File write it): save it as UTF-8 "
                             "(Out-File -Encoding utf8, or Notepad's Save As, UTF-8)") from None
        raise SdoptError(f"{what} {path} is not UTF-8 text: give a text file with one prompt per line") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise SdoptError(f"{what} {path} has no prompts: put one prompt per line")
    return prompts
