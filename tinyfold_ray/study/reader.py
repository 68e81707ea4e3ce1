"""Read a study file's bytes into plain Python data, strictly: every problem is one line.

Beyond `yaml.safe_load`: a file that is not UTF-8 text (a binary file, a NUL byte) is refused with its
line; a key given twice in one mapping, at any depth, is an error naming both lines (PyYAML would keep
the last silently); and `3e-4` is a number, as in YAML 1.2 and in every other tool (YAML 1.1, which
PyYAML follows, reads it as a string because it has no dot).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tinyfold_ray.errors import StudySpecError

MAX_FILE_BYTES = 1 << 20
"""A study file is a page of YAML; anything larger is not one (and is not read into memory)."""


class _StudyLoader(yaml.SafeLoader):
    """SafeLoader plus YAML 1.2 exponent floats without a dot (3e-4, 1E6)."""


_StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_study_file(path: str | Path) -> Any:
    """The YAML document of `path` as dicts, lists and scalars (None for an empty file)."""
    path = Path(path)
    if not path.is_file():
        raise StudySpecError(f"{path}: no such study file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise StudySpecError(f"{path}: {path.stat().st_size} bytes is too large for a study file")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise StudySpecError(f"{path}: cannot read: {e.strerror or e}") from None
    return parse_yaml(data, str(path))


def _line_of(data: bytes | str, offset: int) -> int:
    return data.count(b"\n" if isinstance(data, bytes) else "\n", 0, offset) + 1


def parse_yaml(data: bytes, source: str) -> Any:
    nul = data.find(b"\0")
    if nul >= 0:
        raise StudySpecError(
            f"{source}: line {_line_of(data, nul)}: a NUL byte; a study file is YAML text (is it binary?)"
        )
    try:
        text = data.decode("utf-8-sig")  # -sig: a leading byte-order mark is dropped
    except UnicodeDecodeError as e:
        raise StudySpecError(
            f"{source}: line {_line_of(data, e.start)}: byte 0x{data[e.start]:02x} is not UTF-8; "
            "save the study file as UTF-8 text"
        ) from None
    loader = None
    try:
        loader = _StudyLoader(text)  # its reader already refuses control characters
        node = loader.get_single_node()
        if node is None:
            return None
        _check_duplicate_keys(node, "", source, set())
        return loader.construct_document(node)
    except yaml.reader.ReaderError as e:
        raise StudySpecError(
            f"{source}: line {_line_of(text, e.position)}: not valid YAML: "
            f"character #x{e.character:04x} is not allowed in YAML text"
        ) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}: " if mark else ""
        problem = " ".join(str(e.problem or e.context or "syntax error").split())
        raise StudySpecError(f"{source}: {where}not valid YAML: {problem}") from None
    except yaml.YAMLError as e:
        raise StudySpecError(f"{source}: not valid YAML: {' '.join(str(e).split())}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _check_duplicate_keys(node: yaml.Node, path: str, source: str, seen_nodes: set[int]) -> None:
    # An alias makes the node graph shared (or cyclic): visit each node once.
    if id(node) in seen_nodes:
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            dotted = f"{path}.{key}" if path else str(key)
            if key is not None:
                line = key_node.start_mark.line + 1
                if key in first_line:
                    raise StudySpecError(
                        f"{source}: line {line}: {dotted}: duplicate key (first at line {first_line[key]}); "
                        "give each key once"
                    )
                first_line[key] = line
            _check_duplicate_keys(value_node, dotted, source, seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_duplicate_keys(item, path, source, seen_nodes)
