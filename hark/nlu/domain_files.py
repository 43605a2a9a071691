"""Intent domain files (hassil YAML): loading and validation with file and line numbers.

A domain file is hassil's format::

    language: en
    intents:
      orderDrink:
        data:
          - sentences:
              - "[I'd like] [a] {size} {drink}"
    lists:
      size:
        values: [small, medium, large]
    expansion_rules: {...}     # optional
    skip_words: [...]          # optional
    responses:                 # optional, hark's own: what the generic handler says
      orderDrink: "One {size} {drink}, coming up."

Every problem is reported as ``file:line: message`` so ``hark intents check`` can point
at it; :func:`load_domain` raises :class:`DomainFileError` listing them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hassil import Intents, parse_sentence
from hassil.expression import Group, ListReference, RuleReference

from hark.errors import HarkError

# Lists hark fills from the home description; a domain may use them without defining them.
HOME_LISTS = frozenset({"name", "area", "floor", "zone"})


@dataclass
class DomainProblem:
    """One error in a domain file, with the 1-based line it is on."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class DomainFileError(HarkError):
    """A domain file that cannot be used; ``problems`` lists each error with its line."""

    def __init__(self, problems: list[DomainProblem]):
        self.problems = problems
        super().__init__(
            "invalid intent domain file:\n" + "\n".join(f"  {p}" for p in problems),
            fix="correct the lines named above; 'hark intents check' re-validates them",
        )


@dataclass
class Domain:
    """A loaded domain: hassil intents plus hark's optional reply templates."""

    name: str
    intents: Intents
    path: Path | None = None
    responses: dict[str, str] = field(default_factory=dict)

    @property
    def intent_names(self) -> list[str]:
        return list(self.intents.intents)


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _mapping(node: yaml.Node) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    """Key text -> (key node, value node) for a YAML mapping node."""
    return {str(k.value): (k, v) for k, v in node.value}


def _references(expr: Any, lists: set[str], rules: set[str]) -> None:
    """Collect list and rule names used in a parsed template (recursively)."""
    if isinstance(expr, ListReference):
        lists.add(expr.list_name)
    elif isinstance(expr, RuleReference):
        rules.add(expr.rule_name)
    elif isinstance(expr, Group):
        for item in expr.items:
            _references(item, lists, rules)


class _Checker:
    """Walks a composed YAML tree and records every problem with its line."""

    def __init__(self, file: str, known_lists: frozenset[str]):
        self.file = file
        self.known_lists = known_lists
        self.problems: list[DomainProblem] = []
        self.uses: list[tuple[int, set[str], set[str]]] = []  # line, lists, rules

    def error(self, line: int, message: str) -> None:
        self.problems.append(DomainProblem(self.file, line, message))

    def template(self, node: yaml.Node, what: str) -> None:
        if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
            self.error(_line(node), f"{what} must be a non-empty string")
            return
        try:
            sentence = parse_sentence(str(node.value))
        except Exception as exc:  # hassil raises ParseError, AssertionError, ...
            detail = str(exc) or type(exc).__name__
            self.error(_line(node), f"{what} {node.value!r} does not parse: {detail}")
            return
        lists: set[str] = set()
        rules: set[str] = set()
        _references(sentence.expression, lists, rules)
        self.uses.append((_line(node), lists, rules))

    def check(self, root: yaml.Node | None) -> None:
        if root is None or not isinstance(root, yaml.MappingNode):
            line = _line(root) if root is not None else 1
            self.error(line, "a domain file must be a mapping with an 'intents:' section")
            return
        top = _mapping(root)
        if "intents" not in top:
            self.error(1, "missing the 'intents:' section")
        else:
            self._intents(top["intents"][1])
        defined_lists = set(self.known_lists)
        if "lists" in top:
            defined_lists |= self._lists(top["lists"][1])
        defined_rules: set[str] = set()
        if "expansion_rules" in top:
            rules_node = top["expansion_rules"][1]
            if not isinstance(rules_node, yaml.MappingNode):
                self.error(_line(rules_node), "'expansion_rules' must map names to templates")
            else:
                for name, (_, body) in _mapping(rules_node).items():
                    defined_rules.add(name)
                    self.template(body, f"expansion rule <{name}>")
        if "responses" in top:
            resp = top["responses"][1]
            if not isinstance(resp, yaml.MappingNode):
                self.error(_line(resp), "'responses' must map intent names to reply templates")
        for line, lists, rules in self.uses:
            for name in sorted(lists - defined_lists):
                self.error(line, f"unknown list {{{name}}}: define it under 'lists:' "
                                 f"(built-in lists: {', '.join(sorted(self.known_lists))})")
            for name in sorted(rules - defined_rules):
                self.error(line, f"unknown expansion rule <{name}>: define it under "
                                 "'expansion_rules:'")

    def _intents(self, node: yaml.Node) -> None:
        if not isinstance(node, yaml.MappingNode) or not node.value:
            self.error(_line(node), "'intents' must map intent names to their 'data' lists")
            return
        for name, (_, intent) in _mapping(node).items():
            body = _mapping(intent) if isinstance(intent, yaml.MappingNode) else {}
            data = body.get("data", (None, None))[1]
            if not isinstance(data, yaml.SequenceNode) or not data.value:
                self.error(_line(intent), f"intent {name!r} needs a 'data:' list of "
                                          "blocks with 'sentences:'")
                continue
            for block in data.value:
                fields = _mapping(block) if isinstance(block, yaml.MappingNode) else {}
                sentences = fields.get("sentences", (None, None))[1]
                if not isinstance(sentences, yaml.SequenceNode) or not sentences.value:
                    self.error(_line(block), f"intent {name!r}: each data block needs a "
                                             "non-empty 'sentences:' list")
                    continue
                for sentence in sentences.value:
                    self.template(sentence, f"intent {name!r}: sentence")

    def _lists(self, node: yaml.Node) -> set[str]:
        names: set[str] = set()
        if not isinstance(node, yaml.MappingNode):
            self.error(_line(node), "'lists' must map list names to their values")
            return names
        for name, (_, body) in _mapping(node).items():
            names.add(name)
            fields = _mapping(body) if isinstance(body, yaml.MappingNode) else {}
            if "values" in fields:
                values = fields["values"][1]
                if not isinstance(values, yaml.SequenceNode) or not values.value:
                    self.error(_line(values), f"list {{{name}}}: 'values' must be a "
                                              "non-empty list")
                    continue
                for value in values.value:
                    if isinstance(value, yaml.MappingNode):
                        item = _mapping(value)
                        if "in" not in item:
                            self.error(_line(value), f"list {{{name}}}: a value given as a "
                                                     "mapping needs 'in:' (and usually 'out:')")
                            continue
                        value = item["in"][1]
                    self.template(value, f"list {{{name}}}: value")
            elif "range" in fields:
                rng = fields["range"][1]
                keys = _mapping(rng) if isinstance(rng, yaml.MappingNode) else {}
                for key in ("from", "to"):
                    ok = key in keys and str(keys[key][1].value).lstrip("-").isdigit()
                    if not ok:
                        self.error(_line(rng), f"list {{{name}}}: range needs an integer "
                                               f"'{key}:'")
            elif "wildcard" not in fields:
                self.error(_line(body), f"list {{{name}}} needs 'values:', 'range:' or "
                                        "'wildcard: true'")
        return names


def check_domain_text(text: str, file: str = "<string>",
                      known_lists: frozenset[str] = HOME_LISTS) -> list[DomainProblem]:
    """Every problem in a domain file's text (empty list when it is valid)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        return [DomainProblem(file, line, f"not valid YAML: {exc.problem or exc}")]
    except yaml.YAMLError as exc:
        return [DomainProblem(file, 1, f"not valid YAML: {exc}")]
    checker = _Checker(file, known_lists)
    checker.check(root)
    return checker.problems


def load_domain_text(text: str, name: str, file: str = "<string>",
                     known_lists: frozenset[str] = HOME_LISTS,
                     path: Path | None = None) -> Domain:
    """Validate and build a domain; raises :class:`DomainFileError` on any problem."""
    problems = check_domain_text(text, file, known_lists)
    if problems:
        raise DomainFileError(problems)
    data = yaml.safe_load(text)
    data.setdefault("language", "en")
    responses_raw = data.pop("responses", None) or {}
    try:
        intents = Intents.from_dict(data)
    except Exception as exc:
        raise DomainFileError([DomainProblem(file, 1, f"hassil rejected the file: {exc}")]) \
            from exc
    responses: dict[str, str] = {}
    for intent_name, template in responses_raw.items():
        if isinstance(template, dict):  # Home Assistant style: {default: "..."}
            template = template.get("default", next(iter(template.values()), ""))
        responses[str(intent_name)] = str(template)
    return Domain(name=name, intents=intents, path=path, responses=responses)


def load_domain(path: str | Path, name: str | None = None,
                known_lists: frozenset[str] = HOME_LISTS) -> Domain:
    """Load one domain file; the domain's name defaults to the file's stem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DomainFileError([DomainProblem(str(path), 1, f"cannot read: {exc}")]) from exc
    return load_domain_text(text, name or path.stem, str(path), known_lists, path)


def check_domain(path: str | Path) -> list[DomainProblem]:
    """Problems in one domain file (empty when valid)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [DomainProblem(str(path), 1, f"cannot read: {exc}")]
    return check_domain_text(text, str(path))


BUILTIN_DOMAINS_DIR = Path(__file__).with_name("domains")


def domain_paths(domains_dir: str, builtin: list[str]) -> list[Path]:
    """The domain files a config names: built-ins that exist, then the user's folder."""
    paths = []
    for name in builtin:
        candidate = BUILTIN_DOMAINS_DIR / f"{name}.yaml"
        if candidate.exists():
            paths.append(candidate)
    if domains_dir:
        folder = Path(domains_dir).expanduser()
        if folder.is_dir():
            paths += sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml"))
        elif folder.is_file():
            paths.append(folder)
    return paths
