"""Template prompts: Jinja2 analysis (seed fields, step references, problems).

Prompts are untrusted user code; they run in the sandbox of `palette.prompts`, whose
limits this module also applies at save where it can: an expression that reads no
variable and breaks a limit would break it at every render, so it is a SANDBOX_LIMIT
problem now (`_constants_over_the_limits`).

Seed fields are dotted paths read from the prompt's syntax tree (see `analyse`). The rule
for nesting: a path is required only where nothing deeper under it is required, so
`{{ author }}` and `{{ author.name }}` together require `author.name` (which implies an
`author` object). A path read only through `| default(...)` or under an
`{% if x.y is defined %}` guard is optional; its parent stays required, because the
strict sandbox still has to look it up.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from jinja2 import TemplateSyntaxError, nodes

from contracts.events.templates import TemplateStep
from contracts.model_tiers import step_model_problem
from palette.prompt_includes import snippet_key
from palette.prompt_nesting import PromptTooDeep
from palette.prompts import (
    ENVIRONMENT,
    MAX_PROMPT_CHARS,
    STEP_OUTPUTS,
    PromptRenderError,
    compile_prompt,
    constant_refusal,
    render,
)

__all__ = ["ENVIRONMENT", "PromptRenderError", "analyse", "compile_prompt", "render"]

_NOT_SEED_FIELDS = frozenset(ENVIRONMENT.globals) | {"self"}


@dataclass(frozen=True, slots=True)
class TemplateProblem:
    """One reason a template definition is refused, located as precisely as known."""

    code: str
    message: str
    step_id: str | None = None
    line: int | None = None
    field: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateAnalysis:
    """What a template reads: seed fields, and per step the seed fields and the earlier
    steps it uses."""

    required_fields: tuple[str, ...]
    step_references: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    step_fields: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class InvalidTemplate(Exception):
    """A template definition with problems; every problem found is reported at once.
    `analysis`, when known, is what the readable steps read (POST /templates/analysis shows
    it beside the problems)."""

    def __init__(self, errors: Sequence[TemplateProblem], analysis: TemplateAnalysis | None = None):
        self.errors = list(errors)
        self.analysis = analysis
        super().__init__("; ".join(_describe_problem(problem) for problem in self.errors))


def _describe_problem(problem: TemplateProblem) -> str:
    where = []
    if problem.step_id is not None:
        where.append(f"step {problem.step_id!r}")
    if problem.line is not None:
        where.append(f"line {problem.line}")
    return f"{' '.join(where)}: {problem.message}" if where else problem.message


# -- analysis ----------------------------------------------------------------------------


def analyse(steps: Sequence[TemplateStep]) -> TemplateAnalysis:
    """Checks a template definition and reads what it needs, or raises InvalidTemplate."""
    problems: list[TemplateProblem] = []
    if not steps:
        problems.append(TemplateProblem("NO_STEPS", "a template needs at least one step"))
    position: dict[str, int] = {}
    for index, step in enumerate(steps):
        if step.id in position:
            problems.append(TemplateProblem("DUPLICATE_STEP", f"step id {step.id!r} is used twice", step.id))
        else:
            position[step.id] = index
        problems.extend(_model_problems(step))

    required: set[tuple[str, ...]] = set()
    references: dict[str, tuple[str, ...]] = {}
    fields: dict[str, tuple[str, ...]] = {}
    for index, step in enumerate(steps):
        reading = _read_prompt(step)
        problems.extend(reading.problems)
        required |= reading.required
        fields[step.id] = _deepest_paths(reading.required)
        used: list[str] = []
        for referenced, line in reading.step_references:
            if referenced not in position:
                problems.append(
                    TemplateProblem("UNKNOWN_STEP", f"steps.{referenced} names no step of this template", step.id, line)
                )
            elif position[referenced] >= index:
                which = "itself" if referenced == step.id else "a later step"
                problems.append(
                    TemplateProblem(
                        "FORWARD_STEP_REFERENCE",
                        f"steps.{referenced} is {which}; a step can only read earlier steps' outputs",
                        step.id,
                        line,
                    )
                )
            elif referenced not in used:
                used.append(referenced)
        references[step.id] = tuple(sorted(used, key=position.__getitem__))

    analysis = TemplateAnalysis(_deepest_paths(required), references, fields)
    if problems:
        raise InvalidTemplate(problems, analysis)
    return analysis


def _model_problems(step: TemplateStep) -> list[TemplateProblem]:
    """The rule a job's `models` are held to (contracts/identifiers.py), so a template never
    names a model no job could run; or a tier (`contracts.model_tiers`), which a job resolves."""
    problem = step_model_problem(step.model)
    if problem is None:
        return []
    return [TemplateProblem("INVALID_MODEL", problem, step.id, field=f"steps.{step.id}.model")]


def _deepest_paths(paths: set[tuple[str, ...]]) -> tuple[str, ...]:
    """Dotted paths, dropping any that is a strict prefix of another (a deeper one implies it)."""
    prefixes = {path[:length] for path in paths for length in range(1, len(path))}
    return tuple(sorted(".".join(path) for path in paths - prefixes))


@dataclass
class _PromptReading:
    required: set[tuple[str, ...]] = field(default_factory=set)
    step_references: list[tuple[str, int]] = field(default_factory=list)
    problems: list[TemplateProblem] = field(default_factory=list)


def _read_prompt(step: TemplateStep) -> _PromptReading:
    """What one step's prompt reads and its problems. A prompt nested too deeply for Jinja and
    Python is refused by the parse itself (palette.prompt_nesting): PROMPT_TOO_DEEP."""
    reading = _PromptReading()
    if not step.prompt.strip():
        reading.problems.append(TemplateProblem("EMPTY_PROMPT", "the prompt is empty", step.id))
        return reading
    try:
        tree = ENVIRONMENT.parse(step.prompt)
    except TemplateSyntaxError as error:
        reading.problems.append(_syntax_problem(step.id, error))
        return reading
    reading.problems.extend(_refused_constructs(step.id, tree, step.includes))
    _SeedFieldReader(step.id, reading, step.includes).body(tree.body, set())
    if not reading.problems:
        try:
            compile_prompt(step.prompt)
        except TemplateSyntaxError as error:
            reading.problems.append(_syntax_problem(step.id, error))
    if not reading.problems:
        reading.problems.extend(_constants_over_the_limits(step.id, tree))
    return reading


def _constants_over_the_limits(step_id: str, tree: nodes.Template) -> list[TemplateProblem]:
    """Expressions that read no variable and that the sandbox refuses at every render
    (`{{ ['x' * 999999] * 1000 }}`, `{{ range(10**9) | list }}`), and a prompt whose text
    and constant output outside any block are together over MAX_PROMPT_CHARS
    (`{{ 'x' * 999999 }}{{ 'x' * 999999 }}`), found now rather than when a job runs."""
    problems = []
    always_rendered = {id(node) for node in tree.body if isinstance(node, nodes.Output)}
    constant_chars = 0
    for node in tree.find_all((nodes.Output, nodes.Assign)):
        if isinstance(node, nodes.Output):
            expressions = node.nodes
        else:
            assert isinstance(node, nodes.Assign) and isinstance(node.node, nodes.Expr)
            expressions = [node.node]
        counted = id(node) in always_rendered
        for expression in expressions:
            if isinstance(expression, (nodes.TemplateData, nodes.Const)):
                constant_chars += (
                    len(str(expression.data if isinstance(expression, nodes.TemplateData) else expression.value))
                    if counted
                    else 0
                )
                continue
            if _reads_variables(expression):
                continue
            reason, size = constant_refusal(copy.deepcopy(expression))
            if reason is not None:
                problems.append(
                    TemplateProblem("SANDBOX_LIMIT", f"refused by the sandbox: {reason}", step_id, expression.lineno)
                )
            elif counted:
                constant_chars += size
    if not problems and constant_chars > MAX_PROMPT_CHARS:
        problems.append(
            TemplateProblem(
                "SANDBOX_LIMIT",
                f"refused by the sandbox: the prompt renders {constant_chars:,} characters without any variable, "
                f"over the {MAX_PROMPT_CHARS:,}-character limit of a prompt",
                step_id,
                1,
            )
        )
    return problems


def _reads_variables(expression: nodes.Expr) -> bool:
    """Whether `expression` names anything but the sandbox's globals (`range`, `lipsum`...)."""
    return any(name.name not in ENVIRONMENT.globals for name in expression.find_all(nodes.Name))


def _syntax_problem(step_id: str, error: TemplateSyntaxError) -> TemplateProblem:
    code = "PROMPT_TOO_DEEP" if isinstance(error, PromptTooDeep) else "PROMPT_SYNTAX_ERROR"
    return TemplateProblem(code, error.message or str(error), step_id, error.lineno)


def _refused_constructs(step_id: str, tree: nodes.Template, includes: Mapping[str, str]) -> list[TemplateProblem]:
    """Unknown filters and tests, dunder attributes, tags that need a template loader, and
    includes the step did not record (services/templates/includes.py records them on save).

    Jinja defers unknown filters inside `{% if %}` to render time, and those that `map`,
    `select` and the like name by a string until they run; we refuse them all now.
    """
    problems = []
    for node in tree.find_all((nodes.Filter, nodes.Test)):
        known = ENVIRONMENT.filters if isinstance(node, nodes.Filter) else ENVIRONMENT.tests
        if node.name not in known:
            kind = "filter" if isinstance(node, nodes.Filter) else "test"
            problems.append(
                TemplateProblem(f"UNKNOWN_{kind.upper()}", f"no {kind} named {node.name!r}", step_id, node.lineno)
            )
        if isinstance(node, nodes.Filter) and (by_argument := _named_by_argument(node)) is not None:
            named_kind, named = by_argument
            if named not in (ENVIRONMENT.filters if named_kind == "filter" else ENVIRONMENT.tests):
                message = f"no {named_kind} named {named!r} (in {node.name})"
                problems.append(TemplateProblem(f"UNKNOWN_{named_kind.upper()}", message, step_id, node.lineno))
        if isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            name = node.args[0]
            if isinstance(name, nodes.Const) and isinstance(name.value, str) and name.value.startswith("__"):
                problems.append(_unsafe(step_id, name.value, node.lineno))
    for access in tree.find_all((nodes.Getattr, nodes.Getitem)):
        attribute: object
        if isinstance(access, nodes.Getattr):
            attribute = access.attr
        else:
            assert isinstance(access, nodes.Getitem)
            attribute = getattr(access.arg, "value", None)
        if isinstance(attribute, str) and _private(access.node, attribute):
            problems.append(_unsafe(step_id, attribute, access.lineno))
    for include in tree.find_all(nodes.Include):
        reference = include.template.value if isinstance(include.template, nodes.Const) else None
        if not isinstance(reference, str) or snippet_key(reference, None) not in includes:
            problems.append(
                TemplateProblem(
                    "UNRESOLVED_INCLUDE", "the include was not resolved when saved", step_id, include.lineno
                )
            )
    for tag in tree.find_all((nodes.Extends, nodes.Import, nodes.FromImport)):
        problems.append(
            TemplateProblem(
                "UNSUPPORTED_TAG",
                "extends and import are not available: a prompt shares text by {% include %}",
                step_id,
                tag.lineno,
            )
        )
    return problems


_NAMES_BY_ARGUMENT = {
    "map": ("filter", 0),
    "select": ("test", 0),
    "reject": ("test", 0),
    "selectattr": ("test", 1),
    "rejectattr": ("test", 1),
}
"""Jinja's filters that take a filter's or test's name as a positional argument, and which."""


def _named_by_argument(node: nodes.Filter) -> tuple[str, str] | None:
    """The kind and name of the filter or test `map('lower')`, `select('odd')` or
    `selectattr('x', 'odd')` names by a string constant, if it does."""
    if node.name not in _NAMES_BY_ARGUMENT:
        return None
    kind, position = _NAMES_BY_ARGUMENT[node.name]
    argument = node.args[position] if len(node.args) > position else None
    if isinstance(argument, nodes.Const) and isinstance(argument.value, str):
        return kind, argument.value
    return None


_JINJA_OBJECTS = frozenset({"self", "loop", "caller", "varargs", "kwargs"})
_MANGLED = re.compile(r"_[A-Za-z0-9]\w*__\w")


def _private(owner: nodes.Node, attribute: str) -> bool:
    """What the sandbox refuses at every render: a dunder, a name-mangled private
    (`_TemplateReference__context`), or any `_` attribute of Jinja's own objects (`self`,
    `loop`). A seed field may start with `_` (`record._id`), so that alone is allowed."""
    if attribute.startswith("__") or _MANGLED.match(attribute):
        return True
    return attribute.startswith("_") and isinstance(owner, nodes.Name) and owner.name in _JINJA_OBJECTS


def _unsafe(step_id: str, attribute: str, line: int) -> TemplateProblem:
    return TemplateProblem("UNSAFE_ATTRIBUTE", f"{attribute!r} is not accessible in a prompt", step_id, line)


_MACRO_NAMES = frozenset({"caller", "varargs", "kwargs"})


class _SeedFieldReader:
    """Walks a prompt's statements in order, tracking which names are bound locally.

    `bound` is the set of names a scope has bound so far: loop targets and `loop`, `set`,
    `with`, macro arguments. Statements that open a scope get a copy; `set` inside an `if`
    stays in the enclosing scope, as in Jinja.
    """

    def __init__(self, step_id: str, reading: _PromptReading, includes: Mapping[str, str]):
        self.step_id = step_id
        self.reading = reading
        self.guarded: list[set[tuple[str, ...]]] = []
        self.includes = includes
        self.snippet: str | None = None  # the snippet being read, None in the step's prompt

    def body(self, statements: Sequence[nodes.Node], bound: set[str]) -> None:
        for statement in statements:
            self.statement(statement, bound)

    def statement(self, node: nodes.Node, bound: set[str]) -> None:
        if isinstance(node, nodes.Output):
            for child in node.nodes:
                self.expr(child, bound)
        elif isinstance(node, nodes.For):
            self.expr(node.iter, bound)
            inner = bound | _targets(node.target)
            if node.test is not None:
                self.expr(node.test, inner)
            self.body(node.body, inner | {"loop"})
            self.body(node.else_, set(bound))
        elif isinstance(node, nodes.If):
            self.expr(node.test, bound)
            self.guarded.append(_defined_paths(node.test))
            self.body(node.body, bound)
            self.guarded.pop()
            for branch in node.elif_:
                self.statement(branch, bound)
            self.body(node.else_, bound)
        elif isinstance(node, (nodes.Macro, nodes.CallBlock)):
            if isinstance(node, nodes.CallBlock):
                self.expr(node.call, bound)
            for default in node.defaults:
                self.expr(default, bound)
            inner = bound | {argument.name for argument in node.args} | _MACRO_NAMES
            if isinstance(node, nodes.Macro):
                bound.add(node.name)
                inner.add(node.name)
            self.body(node.body, inner)
        elif isinstance(node, nodes.With):
            for value in node.values:
                self.expr(value, bound)
            self.body(node.body, bound | set().union(*(_targets(target) for target in node.targets)))
        elif isinstance(node, nodes.Assign):
            self.expr(node.node, bound)
            bound |= _targets(node.target)
        elif isinstance(node, nodes.AssignBlock):
            if node.filter is not None:
                self.expr(node.filter, bound)
            self.body(node.body, set(bound))
            bound |= _targets(node.target)
        elif isinstance(node, nodes.FilterBlock):
            self.expr(node.filter, bound)
            self.body(node.body, bound)
        elif isinstance(node, nodes.ExprStmt):
            self.expr(node.node, bound)
        elif isinstance(node, nodes.Include):
            self.include(node, bound)
        else:
            scope = set(bound)
            for part in node.iter_child_nodes():
                if isinstance(part, nodes.Stmt):
                    self.statement(part, scope)
                else:
                    self.expr(part, bound)

    def include(self, node: nodes.Include, bound: set[str]) -> None:
        """An included snippet reads the including scope's names: its fields count as the
        step's own. Its text was checked when its version was saved."""
        reference = node.template.value if isinstance(node.template, nodes.Const) else None
        key = snippet_key(reference, self.snippet) if isinstance(reference, str) else None
        text = self.includes.get(key) if key is not None else None
        if text is None:
            return  # refused as UNRESOLVED_INCLUDE
        try:
            tree = ENVIRONMENT.parse(text)
        except TemplateSyntaxError:
            return
        outer, self.snippet = self.snippet, key
        self.body(tree.body, set(bound))
        self.snippet = outer

    def expr(self, node: nodes.Node | None, bound: set[str], optional: bool = False) -> None:
        if node is None:
            return
        if isinstance(node, (nodes.Name, nodes.Getattr, nodes.Getitem)):
            root, path, dynamic = _unwind(node)
            for part in dynamic:
                self.expr(part, bound)
            if isinstance(root, nodes.Name) and root.ctx == "load":
                self.read(root.name, path, bound, optional, node.lineno)
            elif root is not None:
                self.expr(root, bound)
        elif isinstance(node, nodes.Call):
            receiver = node.node
            if isinstance(receiver, (nodes.Getattr, nodes.Getitem)):
                receiver = receiver.node  # a method: the seed field is its receiver
            self.expr(receiver, bound)
            self.arguments(node, bound)
        elif isinstance(node, nodes.Filter):
            self.expr(node.node, bound, optional=node.name in {"default", "d"})
            self.arguments(node, bound)
        elif isinstance(node, nodes.Test):
            self.expr(node.node, bound, optional=node.name in {"defined", "undefined"})
            self.arguments(node, bound)
        else:
            for child in node.iter_child_nodes():
                self.expr(child, bound)

    def arguments(self, node: nodes.Call | nodes.Filter | nodes.Test, bound: set[str]) -> None:
        for argument in node.args:
            self.expr(argument, bound)
        for keyword in node.kwargs:
            self.expr(keyword.value, bound)
        self.expr(node.dyn_args, bound)
        self.expr(node.dyn_kwargs, bound)

    def read(self, name: str, path: tuple[str, ...], bound: set[str], optional: bool, line: int) -> None:
        if name in bound or (name in _NOT_SEED_FIELDS and name != STEP_OUTPUTS):
            return
        if name == STEP_OUTPUTS:
            self.step_reference(path, line)
            return
        full = (name, *path)
        guard = next((guard for guards in self.guarded for guard in guards if full[: len(guard)] == guard), None)
        if guard is not None:
            full = guard
        if optional or guard is not None:
            if len(full) > 1:
                self.reading.required.add(full[:-1])
            return
        self.reading.required.add(full)

    def step_reference(self, path: tuple[str, ...], line: int) -> None:
        if len(path) >= 2 and path[1] == "output":
            self.reading.step_references.append((path[0], line))
        else:
            self.reading.problems.append(
                TemplateProblem(
                    "INVALID_STEP_REFERENCE",
                    "earlier outputs are read as steps.<step id>.output, with a literal step id",
                    self.step_id,
                    line,
                )
            )


def _unwind(node: nodes.Expr) -> tuple[nodes.Expr | None, tuple[str, ...], list[nodes.Expr]]:
    """`a.b["c"][i].d` -> root `a`, constant path `("b", "c")`, dynamic subscripts `[i]`.

    The path stops before the first subscript that is not a literal string: what follows
    depends on data, so the seed must provide the container itself.
    """
    parts: list[str] = []
    dynamic: list[nodes.Expr] = []
    while isinstance(node, (nodes.Getattr, nodes.Getitem)):
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
        elif isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
            parts.append(node.arg.value)
        else:
            dynamic.append(node.arg)
            parts.clear()
        node = node.node
    return node, tuple(reversed(parts)), dynamic


def _targets(target: nodes.Node) -> set[str]:
    """Names a `for`, `set` or `with` target binds (tuples included; `ns.attr` binds none)."""
    return {name.name for name in target.find_all(nodes.Name)} | (
        {target.name} if isinstance(target, nodes.Name) else set()
    )


def _defined_paths(test: nodes.Node) -> set[tuple[str, ...]]:
    """Paths an `if` proves present: `x.y is defined`, alone or joined by `and`."""
    if isinstance(test, nodes.And):
        return _defined_paths(test.left) | _defined_paths(test.right)
    if isinstance(test, nodes.Test) and test.name == "defined":
        root, path, dynamic = _unwind(test.node)
        if isinstance(root, nodes.Name) and not dynamic:
            return {(root.name, *path)}
    return set()
