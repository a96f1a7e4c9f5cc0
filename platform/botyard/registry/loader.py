"""Reading the registry file: YAML with line numbers, ``${VAR}`` substitution, ``.env``.

:func:`load_registry` is the one place where a registry file becomes a
:class:`~botyard.registry.models.Registry`. It never lets a traceback through for bad
input: every problem it can find (YAML syntax, unset variables, unknown keys,
bad values, conflicts between bots) is collected and raised together as one
:class:`~botyard.registry.models.RegistryError`, each line pointing at ``file:line`` and
naming the bot and key, so a broken file is fixed in one round instead of one
error at a time. Token values never appear in those messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from pydantic import ValidationError

from botyard.registry.models import (
    SHARED_VALUES,
    BotConfig,
    Loc,
    Registry,
    RegistryDocument,
    RegistryError,
    cross_field_problems,
    format_loc,
    missing_token_message,
)
from botyard.registry.problems import Lines, Problems, kind_of, line_of
from botyard.tokens import check_token

__all__ = ["RegistryCheck", "RegistryError", "check_registry", "load_registry"]

_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_REFERENCE = re.compile(r"\$\$|\$\{(?P<body>[^}]*)\}|\$\{")
_REFERENCE_BODY = re.compile(
    r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-+?])(?P<argument>.*))?", re.DOTALL
)


# --- loading -----------------------------------------------------------------------


def load_registry(
    path: str | os.PathLike[str],
    *,
    require_tokens: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Registry:
    """Read, substitute and validate a registry file.

    ``environ`` defaults to ``os.environ``; a ``.env`` file beside the registry
    supplies variables it lacks. With ``require_tokens=False``, for commands that
    never call Telegram (and the sandbox, which makes up its own tokens), a token
    that is missing, empty or malformed is no error: it loads as ``None``, and
    ``Registry.token_problems`` says why, for the commands that warn or need it.
    """
    return _load(Path(path), require_tokens, os.environ if environ is None else environ)[0]


def _load(path: Path, require_tokens: bool, environ: Mapping[str, str]) -> tuple[Registry, Lines]:
    source = str(path)
    data, lines = _read_yaml(path)
    problems = Problems(source, lines)
    variables, dotenv_problems = _read_dotenv(path.parent / ".env")
    problems.extend_plain(dotenv_problems)
    data = _substitute(data, {**variables, **environ}, require_tokens, problems, path.name)
    checked = data if require_tokens else _without_bad_tokens(data, problems)
    document = None
    try:
        document = RegistryDocument.model_validate(
            checked, context={"require_tokens": require_tokens, SHARED_VALUES: {}}
        )
    except ValidationError as error:
        for detail in error.errors():
            problems.add_pydantic(detail)
        # Field errors stop pydantic before the checks across bots: run them on the
        # fields that are valid, so that one pass reports everything.
        problems.extend(cross_field_problems(checked))
    problems.raise_if_any(data)
    assert document is not None  # a failed validation always leaves a problem
    fields = {name: getattr(document, name) for name in RegistryDocument.model_fields}
    registry = Registry.model_construct(
        path=path.absolute(), token_problems=problems.token_problems(data), **fields
    )
    return registry, lines


def _without_bad_tokens(data: dict[str, Any], problems: Problems) -> dict[str, Any]:
    """``data`` with every missing, empty or malformed token set to ``None``, each noted
    as a token problem: for the commands that do not need tokens."""
    bots = data.get("bots")
    if not isinstance(bots, list):
        return data
    cleaned: list[Any] = []
    for index, bot in enumerate(bots):
        if not isinstance(bot, dict):
            cleaned.append(bot)
            continue
        loc: Loc = ("bots", index, "token")
        token = bot.get("token")
        if token is None or (isinstance(token, str) and not token.strip()):
            if not problems.has_token_problem(loc):
                problems.token_problem(loc, missing_token_message(bot.get("name")))
            token = None
        else:
            try:
                check_token(str(token))
            except ValueError as error:
                problems.token_problem(loc, str(error))
                token = None
        cleaned.append({**bot, "token": token})
    return {**data, "bots": cleaned}


def _read_yaml(path: Path) -> tuple[dict[str, Any], Lines]:
    """Parse the file into plain data plus the line of every key path."""
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RegistryError([f"{source}: file not found"]) from None
    except UnicodeDecodeError as error:
        raise RegistryError([f"{source}: not UTF-8 text ({error.reason})"]) from None
    except OSError as error:
        raise RegistryError([f"{source}: cannot read: {error.strerror or error}"]) from None
    loader = _SafeLoader(text)
    try:
        node = loader.get_single_node()
        lines: Lines = {}
        structure: list[str] = []
        if node is not None:
            _map_lines(node, (), lines, structure, source)
        if structure:
            raise RegistryError(structure, source=source)
        if node is not None and "&" in text:  # no anchor, no alias: nothing expands
            _refuse_alias_bomb(node, lines, source)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        raise RegistryError([_yaml_error(source, error)]) from None
    except yaml.YAMLError as error:
        raise RegistryError([f"{source}: not valid YAML: {error}"]) from None
    finally:
        loader.dispose()
    if data is None:
        raise RegistryError(
            [f"{source}: the file is empty; it needs at least a bots: list (see botyard schema)"]
        )
    if not isinstance(data, dict):
        raise RegistryError(
            [
                f"{source}:1: the top level must be a mapping of sections (storage, defaults, "
                f"cleanup, webhook, ops, cluster, metrics, bots), not {kind_of(data)}"
            ]
        )
    return data, lines


#: libyaml's parser when PyYAML was built with it: a registry of 10,000 bots parses
#: in 0.3 s instead of 4 s. Both report the same marks and messages.
_SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _yaml_error(source: str, error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
    problem = " ".join(part for part in (error.context, error.problem) if part)
    hint = ""
    if "alias" in problem or "'*'" in problem:
        hint = ' (a value starting with * must be quoted, e.g. schedule: "*/10 * * * *")'
    return f"{where}: not valid YAML: {problem}{hint}"


#: Most values a file may hold once its aliases are expanded. A registry of 10,000 bots
#: holds about 150,000; a few lines of nested aliases can hold billions ("billion
#: laughs"), which validating, diffing and handing to handlers would walk one by one.
MAX_EXPANDED_VALUES = 1_000_000


def _refuse_alias_bomb(root: yaml.Node, lines: Lines, source: str) -> None:
    """Raise :class:`RegistryError` naming the line whose aliases expand too far."""
    sizes: dict[int, int] = {}

    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        if isinstance(node, yaml.SequenceNode):
            return list(node.value)
        return []

    def size(node: yaml.Node) -> int:
        # Iterative, children before parents: a deep file must not hit the recursion limit.
        stack = [node]
        while stack:
            current = stack[-1]
            pending = [child for child in children(current) if id(child) not in sizes]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            sizes[id(current)] = 1 + sum(sizes[id(child)] for child in children(current))
        return sizes[id(node)]

    if size(root) <= MAX_EXPANDED_VALUES:
        return
    node: yaml.Node = root
    loc: Loc = ()
    while True:  # down to the smallest part that is too large by itself
        keyed = (
            [(key.value, value) for key, value in node.value]
            if isinstance(node, yaml.MappingNode)
            else list(enumerate(node.value))
        )
        part, child = max(keyed, key=lambda item: sizes[id(item[1])])
        if sizes[id(child)] <= MAX_EXPANDED_VALUES:
            break
        node, loc = child, (*loc, part) if (*loc, part) in lines else loc
    anchored = node.start_mark.line + 1
    line = lines.get(loc, anchored)
    raise RegistryError(
        [
            f"{source}:{line}: {format_loc(loc) or 'the file'}: aliases expand to "
            f"{sizes[id(node)]:,} values"
            + (f" (the value anchored at line {anchored})" if anchored != line else "")
            + f", more than the {MAX_EXPANDED_VALUES:,} botyard accepts; write the values "
            "out, or use fewer nested aliases"
        ]
    )


def _map_lines(
    node: yaml.Node,
    loc: Loc,
    lines: Lines,
    problems: list[str],
    source: str,
    ancestors: tuple[yaml.Node, ...] = (),
    seen: set[int] | None = None,
) -> None:
    """Record the line of every key, and report what YAML would accept silently.

    A key written twice (YAML keeps the last one) and an alias that contains
    itself are problems. A node reached again through an alias is not walked
    again: its keys take the line of the alias, and a file of nested aliases
    cannot make the walk exponential.
    """
    line = node.start_mark.line + 1
    lines.setdefault(loc, line)
    if node in ancestors:
        problems.append(f"{source}:{line}: {format_loc(loc)}: an alias that contains itself")
        return
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    inner = (*ancestors, node)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = str(key_node.value)
            key_loc = (*loc, key)
            key_line = key_node.start_mark.line + 1
            if key_loc in lines and key != "<<":
                problems.append(
                    f"{source}:{key_line}: {format_loc(key_loc)}: key written twice "
                    f"(first at line {lines[key_loc]}); YAML would silently keep the last one"
                )
                continue
            lines[key_loc] = key_line
            _map_lines(value_node, key_loc, lines, problems, source, inner, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _map_lines(item, (*loc, index), lines, problems, source, inner, seen)


def _read_dotenv(path: Path) -> tuple[dict[str, str], list[str]]:
    """Parse ``KEY=value`` lines (``#`` comments, optional quotes and ``export``)."""
    if not path.is_file():
        return {}, []
    values: dict[str, str] = {}
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        return {}, [f"{path}: cannot read: {error}"]
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").lstrip()
        key, equals, value = line.partition("=")
        key = key.strip()
        if not equals or not _VARIABLE.fullmatch(key):
            problems.append(f"{path}:{number}: expected KEY=value")
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values, problems


# --- ${VAR} substitution -----------------------------------------------------------


def _substitute(
    data: Any,
    variables: Mapping[str, str],
    require_tokens: bool,
    problems: Problems,
    file_name: str,
) -> Any:
    """Replace ``${VAR}`` references in every string value, in Docker Compose's forms
    (``:-``, ``-``, ``:?``, ``?``, ``:+``, ``+``); ``$$`` is ``$``."""

    done: dict[int, Any] = {}  # containers shared through YAML aliases are done once

    def visit(value: Any, loc: Loc) -> Any:
        if isinstance(value, str):
            return substitute_string(value, loc) if "$" in value else value
        if id(value) in done:
            return done[id(value)]
        if isinstance(value, dict):
            result: Any = {key: visit(item, (*loc, key)) for key, item in value.items()}
        elif isinstance(value, list):
            result = [visit(item, (*loc, index)) for index, item in enumerate(value)]
        else:
            return value
        done[id(value)] = result
        return result

    def substitute_string(text: str, loc: Loc) -> str | None:
        missing: list[str] = []
        empty: list[str] = []

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            body = match.group("body")
            if body is None:
                problems.add(loc, "unterminated ${ (write ${NAME}, or $$ for a literal $)")
                return ""
            reference = _REFERENCE_BODY.fullmatch(body)
            if reference is None:
                problems.add(
                    loc,
                    f"invalid reference ${{{body}}}: write ${{NAME}}, ${{NAME:-default}}, "
                    "${NAME-default}, ${NAME:?message} or ${NAME?message}",
                )
                return ""
            name = reference["name"]
            operator, argument = reference["operator"] or "", reference["argument"] or ""
            value = variables.get(name)
            # As in Docker Compose: with ':' an empty value counts as unset.
            unset = value is None or (operator.startswith(":") and not value)
            blank_default = operator.endswith("-") and not argument.strip()
            optional_required = operator.endswith("?") and not require_tokens
            if _is_token(loc) and unset and (blank_default or optional_required):
                # Nothing in the token: token_from_variables names the variable.
                (missing if value is None else empty).append(name)
                return ""
            if operator.endswith("-") and unset:
                return argument
            if operator.endswith("+"):
                return "" if unset else argument
            if operator.endswith("?") and unset:
                problems.add(
                    loc,
                    f"environment variable {name} is {'not set' if value is None else 'empty'}"
                    + (f": {argument}" if argument else ""),
                )
                return ""
            if value is None:
                missing.append(name)
                return ""
            if not value.strip():
                empty.append(name)
            return value

        result = _REFERENCE.sub(replace, text)
        if _is_token(loc):
            return token_from_variables(result, loc, missing, empty)
        if not missing:
            return result
        fallback = "" if loc == ("storage", "uri") else "default"
        for name in missing:
            problems.add(
                loc,
                f"environment variable {name} is not set (export it, add it to .env next to "
                f"{file_name}, or write ${{{name}:-{fallback}}})",
            )
        return result

    def token_from_variables(
        result: str, loc: Loc, missing: list[str], empty: list[str]
    ) -> str | None:
        """A token made of unset or empty variables is reported naming them, never as
        a malformed token of 0 characters; ``None`` where tokens are not required."""
        if result.strip() or not (missing or empty):
            return result
        how = f"export it with the bot's token, or set it in .env next to {file_name}"
        message = "; ".join(
            [f"environment variable {name} is not set ({how})" for name in missing]
            + [f"environment variable {name} is empty ({how})" for name in empty]
        )
        if require_tokens:
            problems.add(loc, message)
            return result
        problems.token_problem(loc, message)
        return None

    return visit(data, ())


def _is_token(loc: Loc) -> bool:
    return len(loc) == 3 and loc[0] == "bots" and loc[2] == "token"


# --- botyard check ----------------------------------------------------------------


class RegistryCheck(NamedTuple):
    """What :func:`check_registry` found in a valid registry."""

    #: One line: how many bots, routers and hooks.
    summary: str
    #: Token problems, where tokens were not required: one line each, in file order.
    warnings: tuple[str, ...]


def check_registry(
    path: str | os.PathLike[str],
    *,
    require_tokens: bool = True,
    environ: Mapping[str, str] | None = None,
) -> RegistryCheck:
    """Check that a registry is ready to run; return a one-line summary and warnings.

    Loads and validates the file, then imports every router and hook (of
    disabled bots too, so they still work when enabled), and checks that no
    Router object is shared by two enabled bots. Raises :class:`RegistryError`
    listing every problem. With ``require_tokens=False`` a missing, empty or
    malformed token is a warning instead. Talks to no network; it does run the
    top level of the bots' modules, as starting them would.
    """
    registry, lines = _load(Path(path), require_tokens, os.environ if environ is None else environ)
    # Only now: parsing a registry never imports aiogram, which the routers need.
    from botyard.runtime.routers import RouterResolver, resolve_callable

    source = str(path)
    index = {bot.name: number for number, bot in enumerate(registry.bots)}

    def locate(bot: BotConfig, loc: Loc) -> str:
        full: Loc = ("bots", index[bot.name], *loc)
        line = line_of(full, lines)
        where = f"{source}:{line}" if line else source
        return f"{where}: bots[{index[bot.name]}] ({bot.name}).{format_loc(loc)}"

    problems: list[str] = []
    shared = RouterResolver(registry.base_dir, locate=locate)
    for bot in registry.bots:
        routers = shared if bot.enabled else RouterResolver(registry.base_dir, locate=locate)
        try:
            routers.resolve(bot)
        except RegistryError as error:
            problems.extend(error.problems)
        if bot.on_state_expired:
            try:
                resolve_callable(
                    bot.on_state_expired,
                    registry.base_dir,
                    where=locate(bot, ("on_state_expired",)),
                )
            except RegistryError as error:
                problems.extend(error.problems)
    if problems:
        raise RegistryError(problems, source=source)
    enabled = len(registry.enabled_bots)
    routers_count = sum(len(bot.routers) for bot in registry.bots)
    hooks = sum(1 for bot in registry.bots if bot.on_state_expired)
    summary = (
        f"{source}: OK: {len(registry.bots)} bot(s), {enabled} enabled "
        f"({', '.join(bot.name for bot in registry.enabled_bots) or 'none'}); "
        f"{routers_count} router(s) and {hooks} hook(s) imported"
    )
    return RegistryCheck(summary, tuple(registry.token_problems.values()))
