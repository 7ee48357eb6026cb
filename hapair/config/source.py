"""Reading a config or key file, and parsing TOML, so that hostile input is only ever an error.

Files are opened without blocking and must be regular files (a FIFO is refused, never waited
on); a UTF-8 byte order mark, which some Windows editors write, is skipped; nesting deeper than
MAX_NESTING and integer literals too long for Python's int conversion are reported with their
line and key path before tomllib would recurse or raise something other than a ConfigError.
"""

from __future__ import annotations

import os
import re
import stat
import sys
import tomllib
from pathlib import Path
from typing import Any, Final

from hapair.errors import ConfigError

# A hapair config is a few KB; a file larger than this is not one (and is not read whole).
MAX_CONFIG_FILE_BYTES: Final = 1 << 20
# A config needs 3 levels at most; this leaves room and stays far below tomllib's recursion.
MAX_NESTING: Final = 32
_BOM: Final = "\ufeff"


def join_path(prefix: str, relative: str) -> str:
    """``prefix`` and ``relative`` as one dotted key path (``a`` + ``[0]`` is ``a[0]``)."""
    if not prefix:
        return relative
    return prefix + relative if relative.startswith("[") else f"{prefix}.{relative}"


def parse_toml(text: str, source: str = "") -> dict[str, Any]:
    """Parse `text` as TOML; raise ConfigError (never another error) with a line and key path."""
    text = text.removeprefix(_BOM)
    deep = _too_deep(text)
    if deep is not None:
        raise ConfigError(
            source,
            [
                (
                    _key_path_at(text, deep),
                    f"arrays or tables nested more than {MAX_NESTING} deep (line {deep})",
                )
            ],
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [("", f"TOML syntax error: {exc}")]) from None
    except ValueError as exc:
        # int() refuses decimal literals longer than sys.get_int_max_str_digits().
        raise ConfigError(source, [_long_integer(text, exc)]) from None
    except RecursionError:  # pragma: no cover - _too_deep stops this first
        raise ConfigError(source, [("", "nested too deeply to parse")]) from None


# Strings and comments are skipped (their brackets do not count); what is left is structure.
_TOKEN: Final = re.compile(
    r'"""(?:[^\\]|\\.)*?"""|\'\'\'.*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*|[\[\]{}=\n]',
    re.DOTALL,
)


def _too_deep(text: str) -> int | None:
    """The line where arrays/inline tables first nest deeper than MAX_NESTING, else None."""
    depth, line, in_value = 0, 1, False
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token == "\n":
            line += 1
            in_value = in_value and depth > 0
        elif token == "=":
            in_value = True
        elif token in "[{" and (in_value or depth > 0):
            depth += 1
            if depth > MAX_NESTING:
                return line
        elif token in "]}" and depth > 0:
            depth -= 1
        elif len(token) > 1:
            line += token.count("\n")
    return None


_HEADER: Final = re.compile(r"\s*\[(\[?)\s*([^\[\]=]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY: Final = re.compile(r"\s*([A-Za-z0-9_\-\"\'. ]+?)\s*=")


def _key_path_at(text: str, line: int) -> str:
    """The dotted key path that the value on `line` most likely belongs to (for messages)."""
    table, key = "", ""
    seen: dict[str, int] = {}
    for row in text.splitlines()[:line]:
        header = _HEADER.match(row)
        if header is not None:
            name = _bare(header.group(2))
            if header.group(1):
                seen[name] = seen.get(name, -1) + 1
                name = f"{name}[{seen[name]}]"
            table, key = name, ""
            continue
        found = _KEY.match(row)
        if found is not None:
            key = _bare(found.group(1))
    return join_path(table, key)


def _bare(dotted: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in dotted.split("."))


_LONG_DECIMAL: Final = re.compile(r"[+-]?[0-9][0-9_]*")


def _long_integer(text: str, exc: ValueError) -> tuple[str, str]:
    """Locate the integer literal tomllib could not convert; the problem naming it."""
    limit = sys.get_int_max_str_digits()
    for match in _LONG_DECIMAL.finditer(text):
        digits = sum(c.isdigit() for c in match.group())
        if limit and digits > limit:
            line = text.count("\n", 0, match.start()) + 1
            return (
                _key_path_at(text, line),
                f"an integer of {digits} digits (line {line}): far beyond any setting's range",
            )
    return ("", f"cannot parse: {str(exc)[:200]}")


def read_text(path: Path) -> str:
    """Return the text of `path`; raise ConfigError saying plainly why it cannot be read."""
    try:
        raw, _ = read_regular_file(path, MAX_CONFIG_FILE_BYTES)
        if len(raw) > MAX_CONFIG_FILE_BYTES:
            reason = f"{path} is larger than {MAX_CONFIG_FILE_BYTES} bytes: not a hapair config"
        else:
            return raw.decode("utf-8")
    except NotRegularFile as exc:
        reason = f"{path} is {exc.kind}, not a config file"
    except FileNotFoundError:
        reason = f"no such file: {path}"
    except IsADirectoryError:
        reason = f"is a directory, not a config file: {path}"
    except PermissionError:
        reason = f"permission denied reading {path}"
    except UnicodeDecodeError as exc:
        reason = f"not UTF-8 text: {exc.reason} at byte {exc.start}"
    except OSError as exc:
        reason = f"cannot read {path}: {exc.strerror or exc}"
    raise ConfigError(str(path), [("", reason)])


class NotRegularFile(OSError):
    """The path names a FIFO, socket, device or directory: something not to read as a file."""

    def __init__(self, path: Path, kind: str) -> None:
        super().__init__(f"{path} is {kind}, not a regular file")
        self.kind = kind


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO (named pipe)", "a directory"...)."""
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    )
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def read_regular_file(path: Path, limit: int) -> tuple[bytes, os.stat_result]:
    """Up to ``limit + 1`` bytes of `path`, a regular file, and its fstat; never blocks.

    O_NONBLOCK makes opening a FIFO return at once (a plain open waits for a writer); the
    opened file is then fstat-ed, so the type checked is the type of what would be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFile(path, file_kind(info.st_mode))
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks), info
    finally:
        os.close(fd)
