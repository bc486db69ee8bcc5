"""Text that came from the operating system (file names, command-line arguments) as the Unicode text a PNG text
chunk, a JSON answer or a tokenizer needs. A module of its own, below everything: the request, LoRA, embedding,
serve and bench code all read names through it."""

from __future__ import annotations


def readable(text: str) -> str:
    """A file name or command-line argument as the Unicode text a PNG text chunk or a JSON answer must be. Where the
    locale could not decode its bytes (a non-ASCII name under LC_ALL=C with PYTHONUTF8=0) Python holds them as
    surrogates, which UTF-8 refuses: PIL's save and the server's JSON failed on them. They are read in UTF-8 here (the
    real text where the bytes are UTF-8, U+FFFD for a byte that is not); other text is returned as it is."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is no undecoded byte
        return text.encode("utf-8", "replace").decode("utf-8")
