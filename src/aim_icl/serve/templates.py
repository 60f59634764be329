"""Templates a client or the operator writes (a task's query text, the chat demo text): plain named fields only.

`str.format` would also run attribute and index lookups (`{question.x}`), format specs (`{question:99999999}` pads
to any width) and nested fields (`{question:{question}}`, where the filled-in text picks the spec), so a template is
checked field by field once, when it is given, and formatted only after.
"""

from __future__ import annotations

from string import Formatter

from aim_icl.serve.errors import RequestError


def check_template(
    template: str, fields: tuple[str, ...], required: tuple[str, ...] = (), what="template"
) -> None:
    """Refuse `template` unless its fields are bare names from `fields` and it holds every name in `required`."""
    allowed = ", ".join(f"{{{f}}}" for f in fields)
    try:
        parts = list(Formatter().parse(template))
    except ValueError as err:  # a lone '{' or '}'
        raise RequestError(f"{what}: {err}; write a literal brace as '{{{{' or '}}}}'") from None
    used = set()
    for _, name, spec, conversion in parts:
        if name is None:
            continue
        if name not in fields or spec or conversion:
            field = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            raise RequestError(
                f"{what}: field {{{field}}} is not allowed; use only {allowed}, with no '.', '[', ':' or '!'"
            )
        used.add(name)
    missing = [f for f in required if f not in used]
    if missing:
        raise RequestError(f"{what} must hold {{{missing[0]}}}, e.g. 'Q: {{{missing[0]}}} A:'")
