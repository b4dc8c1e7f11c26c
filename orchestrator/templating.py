"""`${name}` placeholders: found, checked and filled, in commands, env values and files.

Only the braced form is a placeholder, so shell variables such as `$HOME` or `$$` pass
through untouched; `$${name}` writes a literal `${name}`. A shell command line never has a
value pasted into it: every variable is exported to the run, and the line that runs refers to
it (`"${name}"`), so the shell expands it as data and never parses it as code, whatever the
quoting, comments or heredocs around it. The values pasted in (`render_command`) are only
for people to read. Runs on workers too (templates are rendered where the run happens), so
it imports nothing from the service.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Callable, Iterable, Mapping
from typing import Any

PLACEHOLDER = re.compile(r"\$(\$)?\{([^{}]*)\}")
VARIABLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PlaceholderError(ValueError):
    """A placeholder names no variable (or is malformed); `names` lists the offenders."""

    def __init__(self, names: list[str]):
        self.names = names
        listed = ", ".join("${" + n + "}" for n in names)
        super().__init__(f"placeholder {listed} has no variable" if len(names) == 1
                         else f"placeholders {listed} have no variable")


def placeholders(text: str) -> list[str]:
    """The variable names a text refers to, in order of first use (escapes excluded)."""
    seen: dict[str, None] = {}
    for match in PLACEHOLDER.finditer(text):
        if not match.group(1):
            seen.setdefault(match.group(2), None)
    return list(seen)


def check_placeholders(texts: Iterable[str], names: Iterable[str]) -> None:
    """Raise PlaceholderError if any text refers to a name that is not a variable."""
    known = set(names)
    unknown: dict[str, None] = {}
    for text in texts:
        for name in placeholders(text):
            if name not in known:
                unknown.setdefault(name, None)
    if unknown:
        raise PlaceholderError(list(unknown))


def format_value(value: Any) -> str:
    """How a variable value is written into text: the shortest exact form."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    return str(value)


def render(text: str, variables: Mapping[str, Any], quote: Callable[[str], str] | None = None) -> str:
    """Fill every `${name}`; `quote` wraps each value (shlex.quote for shell lines)."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(2)
        if match.group(1):
            return "${" + name + "}"
        if name not in variables:
            raise PlaceholderError([name])
        text_value = format_value(variables[name])
        return quote(text_value) if quote else text_value

    return PLACEHOLDER.sub(substitute, text)


def shell_command(command: str, variables: Mapping[str, Any]) -> str:
    """The shell line that runs. A number is written in as it is (digits cannot be code,
    and arithmetic such as `$((${i} * 2))` needs it bare); any other value becomes a quoted
    reference to the exported variable of the same name, so it is one word and never
    shell syntax.

    The quoting state is tracked only to keep each value one word; if it is misjudged (deep
    nesting), the worst outcome is a split or literal word, never executed text.
    """
    pieces: list[str] = []
    state, position = _UNQUOTED, 0
    bodies = _heredoc_bodies(command)
    for match in PLACEHOLDER.finditer(command):
        literal = command[position:match.start()]
        state = _shell_state(literal, state)
        pieces.append(literal)
        reference = "${" + match.group(2) + "}"
        in_heredoc = any(start <= match.start() < end for start, end in bodies)
        value = variables.get(match.group(2))
        if match.group(1):  # $${name}: the literal text ${name}
            pieces.append(reference if state == _SINGLE else "\\" + reference)
        elif _is_number(value):
            pieces.append(format_value(value))
        elif in_heredoc:  # expanded as data there; quotes would be literal text
            pieces.append(reference)
        elif state == _UNQUOTED:
            pieces.append(f'"{reference}"')
        elif state == _DOUBLE:
            pieces.append(reference)
        else:
            pieces.append(f"'\"{reference}\"'")
        position = match.end()
    pieces.append(command[position:])
    return "".join(pieces)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def render_command(command: str | list[str], variables: Mapping[str, Any]) -> str | list[str]:
    """The command with its values filled in, as people read it (dry runs, job records).

    An argument list runs as rendered (no shell). A shell line runs as `shell_command`
    gives it; here each value is shown quoted as the one word it will be.
    """
    if not isinstance(command, str):
        return [render(argument, variables) for argument in command]
    pieces: list[str] = []
    state, position = _UNQUOTED, 0
    for match in PLACEHOLDER.finditer(command):
        literal = command[position:match.start()]
        state = _shell_state(literal, state)
        pieces.append(literal)
        name = match.group(2)
        if match.group(1):
            pieces.append("${" + name + "}")
        elif name not in variables:
            raise PlaceholderError([name])
        else:
            word = shlex.quote(format_value(variables[name]))
            pieces.append(word if state == _UNQUOTED else f"{state}{word}{state}")
        position = match.end()
    pieces.append(command[position:])
    return "".join(pieces)


_UNQUOTED, _SINGLE, _DOUBLE = "", "'", '"'
_HEREDOC = re.compile(r"<<-?[ \t]*([A-Za-z_][A-Za-z0-9_]*)[^\n]*\n")


def _heredoc_bodies(command: str) -> list[tuple[int, int]]:
    """(start, end) of each here-document body with an unquoted delimiter."""
    bodies = []
    for match in _HEREDOC.finditer(command):
        end = re.compile(rf"^[ \t]*{match.group(1)}[ \t]*$", re.MULTILINE).search(command, match.end())
        bodies.append((match.end(), end.start() if end else len(command)))
    return bodies


def _shell_state(text: str, state: str) -> str:
    """The quoting state after `text`, starting in `state` (POSIX sh rules)."""
    escaped, comment, previous = False, False, "\n"
    for char in text:
        if comment:
            comment = char != "\n"
        elif escaped:
            escaped = False
        elif state == _UNQUOTED and char == "#" and previous in " \t\n;&|()":
            comment = True  # a comment: quotes in it do not count
        elif state == _SINGLE:
            if char == "'":
                state = _UNQUOTED
        elif char == "\\":
            escaped = True
        elif state == _DOUBLE:
            if char == '"':
                state = _UNQUOTED
        elif char in "'\"":
            state = char
        previous = char
    return state


def environment(variables: Mapping[str, Any]) -> dict[str, str]:
    """Variables as environment entries, formatted as in commands."""
    return {name: format_value(value) for name, value in variables.items()}
