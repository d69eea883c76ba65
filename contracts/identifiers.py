"""The rules for ids and names that reach stream ids, index keys and blob keys.

Checked at the edge (the API answers 400 naming the field, a token with a bad `sub` 401),
so no worker ever meets a name it cannot store. Each rule returns the problem as text, or
None for a valid value.

- A model is `provider/model-id`: a provider of PROVIDERS, then 1 to MAX_MODEL_ID_CHARS
  characters in all of letters, digits and `. _ - : @ + /`, starting with a letter or
  digit after the provider (Bedrock ids and ARNs, Hugging Face names and Ollama tags fit).
- An id in a body or path (template, seed, job) is 1 to MAX_ID_CHARS letters, digits and
  `_ - . :`, starting with a letter or digit: the server makes them (`tpl_<hex>`, a UUID,
  `job_<hex>`), so a stranger is refused rather than looked up.
- A user id (a token's `sub`) is 1 to MAX_USER_ID_CHARS characters, not blank, with no
  surrounding whitespace, no control character and no `#` (the views' index keys join
  `owner#<user>#status#<status>`, so `alice#status#COMPLETED` would read alice's index);
  any other character is allowed and reaches blob keys only through
  `palette.blobs.keys.key_segment`.
"""

from __future__ import annotations

import re
import unicodedata

PROVIDERS = frozenset({"local", "openai", "bedrock"})
MAX_MODEL_ID_CHARS = 200
MAX_ID_CHARS = 128
MAX_USER_ID_CHARS = 128

_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+/-]*")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def has_control_character(text: str) -> bool:
    """Whether `text` holds a control character (Unicode Cc: NUL, tab, newlines, DEL, C1
    controls) or a lone surrogate (Cs), none of which a key or an index should carry."""
    return any(unicodedata.category(char) in ("Cc", "Cs") for char in text)


def model_problem(model: object) -> str | None:
    """Why `model` is not a valid `provider/model-id`, or None."""
    if not isinstance(model, str):
        return "a model is a string `provider/model-id`"
    if len(model) > MAX_MODEL_ID_CHARS:
        return f"a model name is at most {MAX_MODEL_ID_CHARS} characters"
    provider, slash, model_id = model.partition("/")
    if not slash or provider not in PROVIDERS:
        return f"model {model[:60]!r} is not provider/model-id with a provider of {', '.join(sorted(PROVIDERS))}"
    if not _MODEL_ID.fullmatch(model_id):
        return (
            f"model id {model_id[:60]!r} must start with a letter or digit and hold only letters, "
            "digits and . _ - : @ + /"
        )
    if any(segment in ("", ".", "..") for segment in model_id.split("/")):
        return f"model id {model_id[:60]!r} has an empty, '.' or '..' path segment"
    return None


def id_problem(value: object, name: str = "id") -> str | None:
    """Why `value` is not a valid template, seed or job id, or None."""
    if not isinstance(value, str):
        return f"{name} is a string"
    if not 1 <= len(value) <= MAX_ID_CHARS:
        return f"{name} is 1 to {MAX_ID_CHARS} characters"
    if not _ID.fullmatch(value):
        return f"{name} must start with a letter or digit and hold only letters, digits and _ - . :"
    return None


def user_id_problem(user: object) -> str | None:
    """Why `user` cannot be a user id (a token's `sub`), or None."""
    if not isinstance(user, str) or not user.strip():
        return "the user id is blank"
    if len(user) > MAX_USER_ID_CHARS:
        return f"the user id is longer than {MAX_USER_ID_CHARS} characters"
    if user != user.strip():
        return "the user id starts or ends with whitespace"
    if has_control_character(user):
        return "the user id holds a control character"
    if "#" in user:
        return "the user id holds a '#'"
    return None
