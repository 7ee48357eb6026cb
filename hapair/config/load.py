"""Read a TOML file into a Config, reporting every problem with its dotted path in one error."""

from __future__ import annotations

import base64
import binascii
import difflib
import os
import stat
import types
from pathlib import Path
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from hapair.config.fields import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_SECRET_PATH,
    DEFAULT_STATE_DIR,
    Problems,
)
from hapair.config.model import Config
from hapair.config.shown import toml_repr
from hapair.config.source import (
    NotRegularFile,
    file_kind,
    join_path,
    parse_toml,
    read_regular_file,
    read_text,
)
from hapair.errors import ConfigError

MIN_KEY_BYTES: Final = 32
# A key file is a line of base64; anything much larger is not one.
MAX_SECRET_FILE_BYTES: Final = 4096
SECRET_PATH: Final = "cluster.secret_file"
_KEY_HINT: Final = "create one with `(umask 077; head -c 32 /dev/urandom | base64 > {0})`"

Loc = tuple[int | str, ...]


def load_config(
    path: str | Path = DEFAULT_CONFIG_PATH,
    *,
    check_secret: bool = True,
    check_programs: bool | None = None,
) -> Config:
    """Read, parse and validate `path`; raise one ConfigError listing every problem found.

    ``check_programs`` (default: as ``check_secret``) also checks that every hook and track
    program exists on this host and is executable.
    """
    source = str(path)
    data = parse_toml(read_text(Path(path)), source)
    return validate_config(
        data, source=source, check_secret=check_secret, check_programs=check_programs
    )


def validate_config(
    data: dict[str, Any],
    *,
    source: str = "",
    check_secret: bool = True,
    check_programs: bool | None = None,
) -> Config:
    """Validate parsed TOML `data`; raise one ConfigError listing every problem found."""
    problems: Problems = []
    config: Config | None = None
    try:
        config = Config.model_validate(data, context={"source": source})
    except ValidationError as exc:
        for error in exc.errors():
            problems.extend(_describe(error))
    if check_secret:
        secret_file = _secret_path(data, config, problems)
        if secret_file is not None:
            problems.extend((SECRET_PATH, message) for message in _check_secret(secret_file)[1])
    if check_secret if check_programs is None else check_programs:
        problems.extend(check_programs_exist(data))
    if problems or config is None:
        raise ConfigError(source, problems)
    return config


def read_secret(path: str | Path) -> bytes:
    """Return the key bytes in `path`; raise ConfigError if missing, too open, or not a key."""
    key, problems = _check_secret(Path(path))
    if problems or key is None:
        raise ConfigError(str(path), [(SECRET_PATH, message) for message in problems])
    return key


def _check_secret(path: Path) -> tuple[bytes | None, list[str]]:
    """Return the key in `path` (None if unusable) and every reason it is unusable."""
    hint = _KEY_HINT.format(path)
    problems: list[str] = []
    try:
        raw, info = read_regular_file(path, MAX_SECRET_FILE_BYTES)
        mode = stat.S_IMODE(info.st_mode)
    except NotRegularFile as exc:
        return None, [f"{path} is {exc.kind}, not a regular file (it must hold the key)"]
    except FileNotFoundError:
        return None, [f"no such file: {path} ({hint})"]
    except PermissionError:
        return None, [f"permission denied reading {path} (the daemon needs to read it)"]
    except OSError as exc:
        return None, [f"cannot read {path}: {exc.strerror or exc}"]
    if mode & 0o077:
        problems.append(
            f"{path} is accessible by group or others (mode {mode:04o}): run `chmod 600 {path}`"
        )
    key = _decode_key(raw, path, hint, problems)
    return (None if problems else key), problems


def _decode_key(raw: bytes, path: Path, hint: str, problems: list[str]) -> bytes | None:
    if len(raw) > MAX_SECRET_FILE_BYTES:
        problems.append(f"{path} is larger than {MAX_SECRET_FILE_BYTES} bytes: not a key file")
        return None
    text = raw.strip()
    if not text:
        problems.append(f"{path} is empty ({hint})")
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        problems.append(f"{path} is not base64 ({hint})")
        return None
    if len(key) < MIN_KEY_BYTES:
        problems.append(
            f"{path} decodes to {len(key)} bytes; a key needs at least {MIN_KEY_BYTES} ({hint})"
        )
        return None
    return key


def check_programs_exist(data: dict[str, Any]) -> Problems:
    """Every absolute hook and track program that is missing or not executable on this host."""
    problems: Problems = []
    for table in ("hook", "track"):
        entries = data.get(table)
        if not isinstance(entries, list):
            continue
        for index, entry in enumerate(entries):
            command = entry.get("command") if isinstance(entry, dict) else None
            if not isinstance(command, list) or not command or not isinstance(command[0], str):
                continue
            message = _program_problem(command[0])
            if message is not None:
                problems.append((f"{table}[{index}].command", message))
    return problems


def _program_problem(program: str) -> str | None:
    if not os.path.isabs(program) or "\0" in program:
        return None  # the schema reports it
    try:
        info = os.stat(program)
    except FileNotFoundError:
        return f"{program}: no such file on this host"
    except OSError as exc:
        return f"{program}: cannot be inspected: {exc.strerror or exc}"
    if not stat.S_ISREG(info.st_mode):
        return f"{program} is {file_kind(info.st_mode)}, not a program"
    if not os.access(program, os.X_OK):
        return f"{program} is not executable: run `chmod +x {program}`"
    return None


def _secret_path(data: dict[str, Any], config: Config | None, problems: Problems) -> Path | None:
    """The secret file to check, or None when the schema problems leave it unknown."""
    if config is not None:
        return config.cluster.secret_file
    cluster = data.get("cluster")
    if not isinstance(cluster, dict) or any(p == SECRET_PATH for p, _ in problems):
        return None
    raw = cluster.get("secret_file")
    if raw is None:
        return DEFAULT_SECRET_PATH
    return Path(raw) if isinstance(raw, str) and os.path.isabs(raw) else None


def _describe(error: ErrorDetails) -> Problems:
    """Turn one pydantic error into (dotted path, human message) problems."""
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    shown, target, _ = _walk(error["loc"])
    path = _dotted(shown)
    if kind == "hapair_cross_field":
        return [(join_path(path, rel), msg) for rel, msg in ctx["problems"]]
    if kind.startswith("hapair_"):
        return [(path, error["msg"])]
    if kind == "extra_forbidden":
        return [(path, _unknown_key(error["loc"]))]
    if kind in {"union_tag_invalid", "union_tag_not_found"}:
        field = str(ctx.get("discriminator", "'kind'")).strip("'")
        expected = ", ".join(repr(t) for t in _tags(target))
        if kind == "union_tag_not_found":
            return [(join_path(path, field), f"required: one of {expected}")]
        return [(join_path(path, field), f"must be one of {expected} (got {ctx.get('tag')!r})")]
    if kind == "missing":
        return [(path, _missing(target, shown))]
    if kind in {"model_type", "model_attributes_type", "dict_type"}:
        return [(path, f"must be a table{_got(error['input'])}")]
    if kind in {"tuple_type", "list_type"}:
        return [(path, f"must be an array{_got(error['input'])}")]
    message = error["msg"].removeprefix("Value error, ")
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    return [(path, message + _got(error["input"]))]


def _walk(loc: Loc) -> tuple[list[int | str], object, str | None]:
    """Follow `loc` through the model: the parts worth showing, the type reached, the last tag."""
    current: object = Config
    shown: list[int | str] = []
    tag: str | None = None
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = get_args(current)
            current = args[0] if args else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            current = field.annotation if field is not None else None
            tag = None
        elif part in _tags(current):
            # pydantic puts the discriminator value in the location; the user never wrote it.
            current = _tagged_member(current, part)
            tag = part
            continue
        else:
            current = None
        shown.append(part)
    return shown, _unwrap(current), tag


def _unwrap(tp: object) -> object:
    """Strip Annotated[...] and `| None` down to the type that holds the value."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
            continue
        if origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _union_models(tp: object) -> list[type[BaseModel]]:
    if get_origin(tp) not in (Union, types.UnionType):
        return []
    return [m for m in get_args(tp) if isinstance(m, type) and issubclass(m, BaseModel)]


def _model_tags(model: type[BaseModel]) -> list[str]:
    field = model.model_fields.get("kind")
    if field is None or get_origin(field.annotation) is not Literal:
        return []
    return [str(value) for value in get_args(field.annotation)]


def _tags(tp: object) -> list[str]:
    return [tag for model in _union_models(tp) for tag in _model_tags(model)]


def _tagged_member(tp: object, tag: str) -> type[BaseModel] | None:
    return next((m for m in _union_models(tp) if tag in _model_tags(m)), None)


def _unknown_key(loc: Loc) -> str:
    key = str(loc[-1])
    _, owner, tag = _walk(loc[:-1])
    known: list[str] = []
    if isinstance(owner, type) and issubclass(owner, BaseModel):
        known = list(owner.model_fields)
    context = f" for kind {tag!r}" if tag else ""
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return f"unknown key{context} (did you mean {close[0]!r}?)"
    if known:
        return f"unknown key{context} (known keys: {', '.join(known)})"
    return f"unknown key{context}"


def _missing(target: object, shown: list[int | str]) -> str:
    name = _dotted(shown)
    if isinstance(target, type) and issubclass(target, BaseModel):
        return f"required table [{name}] is missing"
    if get_origin(target) is tuple:
        item = _unwrap(get_args(target)[0])
        if isinstance(item, type) and issubclass(item, BaseModel):
            return f"required: at least one [[{name}]] table"
    return "required key is missing"


def _got(value: object) -> str:
    if isinstance(value, bool | int | float | str):
        return f" (got {toml_repr(value)})"
    return ""


def _dotted(parts: list[int | str]) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def socket_path_hint(path: str | Path) -> Path | None:
    """The control socket a file names, read leniently (for status while the file is broken).

    Only ``cluster.name``, ``node.name`` and ``[runtime]`` are consulted; None if even those
    cannot be read.
    """
    try:
        data = parse_toml(read_text(Path(path)))
        cluster, node = data["cluster"]["name"], data["node"]["name"]
        runtime = data.get("runtime", {})
        if "control_socket" in runtime:
            return Path(runtime["control_socket"])
        state_dir = Path(runtime.get("state_dir", str(DEFAULT_STATE_DIR)))
        return state_dir / f"{cluster}-{node}.sock"
    except (ConfigError, AttributeError, KeyError, TypeError, ValueError):
        return None
