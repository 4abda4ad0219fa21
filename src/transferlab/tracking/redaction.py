"""What a run may record of its config: a secret never, and a value read from the
environment as the `${oc.env:...}` expression that read it (not secret itself, and a rerun
reads the environment again). Only the record is redacted: the run uses the real values.

A secret is recognised by name: a value whose dotted key contains one of SECRET_NAMES
(`hf_token`, `db.password`, every value under `credentials`), case and `_`/`-` ignored.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferlab.errors import UserError

SECRET_NAMES = (
    "token",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
)
REDACTED = "<redacted>"
_REFERENCE = re.compile(r"\$\{\.*[\w-]+(\.[\w-]+)*\}")  # ${a.b}, ${..a}: no resolver
_READS_ENV = re.compile(r"\$\{\s*oc\.env\s*:")
# All a secret may be recorded as: one variable, no default (a default would be a literal).
_ENV_VARIABLE = re.compile(r"""(['"]?)\$\{\s*oc\.env\s*:\s*\w+\s*(,\s*null\s*)?\}\1""")


def is_secret(key: str) -> bool:
    """Whether a key, dotted key or override key names a secret."""
    name = re.sub(r"[_-]", "", key.lower())
    return any(secret in name for secret in SECRET_NAMES)


def recorded_value(key: str, value: Any) -> Any:
    """What may be recorded of `value` under `key`: under a secret's key, only a variable
    of the environment, else REDACTED (unset values and flags are no secrets)."""
    if not is_secret(key) or value in (None, "") or isinstance(value, bool):
        return value
    if isinstance(value, str) and _ENV_VARIABLE.fullmatch(value.replace("\\", "")):
        return value  # also as Hydra escapes it in a sweep job's overrides: $\{oc.env\:VAR\}
    return REDACTED


def redacted_override(override: str) -> str:
    """A command-line override (`+dataset.token=abc`) or argument, as it may be recorded."""
    key, equals, value = override.partition("=")
    return f"{key}={recorded_value(key, value)}" if equals else override


def redacted_command(argv: list[str]) -> str:
    """The command line, as the `command` tag records it."""
    return " ".join([Path(argv[0]).name, *map(redacted_override, argv[1:])])


def redacted(cfg: DictConfig, original: DictConfig) -> DictConfig:
    """`cfg`, resolved, as it may be recorded. `original` is the unresolved config `cfg`
    comes from: a value it read from the environment is recorded as its expression, found
    by key name and value, so also where a derived stage config moved it (the source stage
    merges `source.dataset` onto `dataset`)."""
    from_env = _env_expressions(
        OmegaConf.to_container(original), OmegaConf.to_container(original, resolve=True)
    )
    return OmegaConf.create(_redact(OmegaConf.to_container(cfg, resolve=True), from_env))


def recorded_experiment(composed: DictConfig) -> DictConfig:
    """The whole invocation's config as a rerun needs it: references between its own keys
    (`${trainer.max_epochs}`) kept, so that derived stages resolve them after their merge
    as the first run did; every other interpolation (`${hydra:...}`) resolved; redacted."""
    raw = OmegaConf.to_container(composed)
    values = OmegaConf.to_container(composed, resolve=True)
    from_env = _env_expressions(raw, values)
    return OmegaConf.create(_redact(_keep_references(raw, values), from_env))


def redacted_sweep_config(config: DictConfig) -> DictConfig:
    """A multirun's config unresolved, as Hydra saves it, redacted, its overrides too."""
    tree = _redact(OmegaConf.to_container(config), {})
    overrides = tree["hydra"]["overrides"]
    recorded = {name: [redacted_override(o) for o in given] for name, given in overrides.items()}
    if recorded != overrides:  # the job's overrides again, in one string
        tree["hydra"]["job"]["override_dirname"] = REDACTED
    tree["hydra"]["overrides"] = recorded
    return OmegaConf.create(tree)


def redacted_keys(cfg: DictConfig) -> list[str]:
    """The dotted keys whose values a recorded config does not hold (literal secrets)."""
    return [key for key, value in flatten(OmegaConf.to_container(cfg)).items() if value == REDACTED]


def refuse_redacted_secrets(action: str, cfg: DictConfig) -> None:
    """A recorded config whose literal secrets were redacted cannot run again as recorded."""
    keys = redacted_keys(cfg)
    if keys:
        variable = keys[0].upper().replace(".", "_")
        raise UserError(
            f"cannot {action}: it was given {', '.join(keys)} as a literal secret, which "
            f"is never recorded; give it from the environment instead, e.g. "
            f"{keys[0]}='${{oc.env:{variable}}}'"
        )


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """The leaves of nested dicts by dotted key (a list is a leaf)."""
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: tree}


def _env_expressions(raw: Any, resolved: Any, key: str = "") -> dict[tuple[str, str], Any]:
    """(key name, repr of the value read) -> the expression that read it, for every value
    of a config that reads the environment."""
    if isinstance(raw, dict):
        found = {}
        for name, value in raw.items():
            found.update(_env_expressions(value, resolved[name], str(name)))
        return found
    return {(key, repr(resolved)): raw} if _READS_ENV.search(str(raw)) else {}


def _keep_references(raw: Any, values: Any) -> Any:
    """`values`, with each leaf that `raw` gives as a plain reference to another key kept."""
    if isinstance(raw, dict):
        return {key: _keep_references(value, values[key]) for key, value in raw.items()}
    is_reference = isinstance(raw, str) and _REFERENCE.fullmatch(raw)
    return raw if is_reference else values


def _redact(tree: Any, from_env: dict[tuple[str, str], Any], path: tuple[str, ...] = ()) -> Any:
    if isinstance(tree, dict):
        return {key: _redact(value, from_env, (*path, str(key))) for key, value in tree.items()}
    value = from_env.get((path[-1], repr(tree)), tree)
    return recorded_value(".".join(path), value)
