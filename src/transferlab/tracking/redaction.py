"""What a run may record of its config: a secret never, and a value read from the
environment as the `${oc.env:...}` expression that read it (not secret itself, and a rerun
reads the environment again). Only the record is redacted: the run uses the real values.

A secret is recognised by its key path, inside any value: a leaf whose dotted path has a
segment containing one of SECRET_NAMES (`hf_token`, `db.PASSWORD`, every value under
`credentials`, `+dataset.extra={token:x}`), or a segment that is `key` itself; case, `_`
and `-` ignored. Overrides are read with Hydra's override parser, so a dict, a list or a
sweep given on the command line is redacted inside. Every URL anywhere loses its
`user:password@` (see transferlab.scrub, which also scrubs free text such as errors).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from transferlab.atomic import write_atomically
from transferlab.compat import ChoiceSweep, override_value_text, parse_override
from transferlab.errors import UserError
from transferlab.objective import changes_result
from transferlab.scrub import REDACTED, remember, scrubbed, without_url_credentials

SECRET_NAMES = (
    "token",
    "secret",
    "password",
    "passwd",
    "passphrase",
    "pass",
    "pwd",
    "auth",
    "bearer",
    "apikey",
    "accesskey",
    "privatekey",
    "credential",
    "session",
    "cookie",
)
KEY = "key"  # a secret only as a whole segment: `ssh.key`, not `monitor_key`
_SEGMENT = re.compile(r"[./\[\]@]")
_REFERENCE = re.compile(r"\$\{\.*[\w-]+(\.[\w-]+)*\}")  # ${a.b}, ${..a}: no resolver
_READS_ENV = re.compile(r"\$\{\s*oc\.env\s*:")
# All a secret may be recorded as: one variable, no default (a default would be a literal).
_ENV_VARIABLE = re.compile(r"""(['"]?)\$\{\s*oc\.env\s*:\s*\w+\s*(,\s*null\s*)?\}\1""")


def is_secret(key: str) -> bool:
    """Whether a key, dotted key, override key or group path names a secret."""
    segments = _SEGMENT.split(key.lstrip("+~").lower())
    return any(_names_secret(segment) for segment in segments)


def recorded_value(key: str, value: Any) -> Any:
    """What may be recorded of `value` (a leaf, dict or list) under `key`: under a secret's
    key, only a variable of the environment, else REDACTED (unset values and flags are no
    secrets); elsewhere the same inside it, and URLs without their credentials."""
    return _redact(value, {}, tuple(key.lstrip("+~").split(".")))


def redacted_override(override: str) -> str:
    """A command-line override (`+dataset.extra={token:abc}`) or argument, as it may be
    recorded: unchanged when it holds no secret."""
    parsed = parse_override(override)
    if parsed is None or parsed.value() is None:  # an argument (`-m`), a deletion (`~key`)
        key, equals, value = override.partition("=")
        hidden = recorded_value(key, value) if equals else value
        return without_url_credentials(f"{key}{equals}{hidden}" if equals else override)
    value = parsed.value()
    path = tuple(re.split(r"[./]", parsed.key_or_group))
    if isinstance(value, ChoiceSweep):
        recorded = [_redact(item, {}, path) for item in value.list]
        if recorded == value.list:
            return override
        text = ",".join(map(override_value_text, recorded))
        shown = text if value.simple_form else f"choice({text})"
        return f"{parsed.get_key_element()}={REDACTED if REDACTED in recorded else shown}"
    if parsed.is_sweep_override():  # a range or interval of numbers, a glob of choices
        return without_url_credentials(override)
    recorded = _redact(value, {}, path)
    if recorded == value:
        return override
    if isinstance(value, str) and recorded != REDACTED:  # a URL's credentials, as typed
        return without_url_credentials(override)
    return f"{parsed.get_key_element()}={override_value_text(recorded)}"


def redacted_command(argv: list[str]) -> str:
    """The command line, as the `command` tag records it."""
    return scrubbed(" ".join([Path(argv[0]).name, *map(redacted_override, argv[1:])]))


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
    """A multirun's config (or a job's `hydra` node, as `.hydra/hydra.yaml` holds it)
    unresolved, as Hydra saves it, redacted: its overrides too, and where they differ, the
    job's override_dirname (the same overrides in one string)."""
    tree = _redact(OmegaConf.to_container(config), {})
    hydra = tree.get("hydra", {})
    overrides = hydra.get("overrides", {})
    recorded = {name: redacted_overrides(given) for name, given in overrides.items()}
    if recorded != overrides and "override_dirname" in hydra.get("job", {}):
        hydra["job"]["override_dirname"] = REDACTED
    if overrides:
        hydra["overrides"] = recorded
    return OmegaConf.create(tree)


def redacted_overrides(given: list[str]) -> list[str]:
    return [redacted_override(override) for override in given]


def remember_secrets(config: DictConfig) -> None:
    """Makes transferlab.scrub find every secret of `config` (the whole Hydra config, its
    overrides included) in free text, such as a job's error."""
    redacted_sweep_config(config)


def save_sweep_config(path: Path, config: DictConfig) -> None:
    """A multirun's config, redacted, as `multirun.yaml`: private to the user."""
    _save_private(path, OmegaConf.to_yaml(redacted_sweep_config(config)))


def redact_saved_sweep_config(path: Path) -> None:
    """Hydra's basic sweeper saves `multirun.yaml` itself, with every secret: saved again,
    redacted."""
    if path.is_file():
        save_sweep_config(path, OmegaConf.load(path))


def redact_hydra_files(folder: Path) -> None:
    """A job's `.hydra/` as Hydra wrote it (its config, `hydra` node and overrides), again
    redacted, each file and the folder private to the user."""
    if not folder.is_dir():
        return
    folder.chmod(0o700)
    written = {
        "config.yaml": lambda raw: _redact(OmegaConf.to_container(raw), {}),
        "hydra.yaml": redacted_sweep_config,
        "overrides.yaml": lambda raw: redacted_overrides(OmegaConf.to_container(raw)),
    }
    for name, redact in written.items():
        if (folder / name).is_file():
            recorded = redact(OmegaConf.load(folder / name))
            _save_private(folder / name, OmegaConf.to_yaml(recorded))


def redacted_keys(cfg: DictConfig) -> list[str]:
    """The dotted keys whose values a recorded config does not hold (literal secrets, URL
    credentials of keys that can change a result; the reader sets its own tracking URI)."""
    return [
        key
        for key, value in flatten(OmegaConf.to_container(cfg)).items()
        if value == REDACTED or (changes_result(key) and REDACTED in str(value))
    ]


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
    """`tree` as it may be recorded; `path` is its key path, which decides what is secret."""
    if isinstance(tree, dict):
        return {key: _redact(value, from_env, (*path, str(key))) for key, value in tree.items()}
    secret = is_secret(".".join(path))
    if isinstance(tree, list) and not secret:
        return [_redact(item, from_env, path) for item in tree]
    if not secret:
        value = from_env.get((path[-1], repr(tree)), tree) if path else tree
        return without_url_credentials(value) if isinstance(value, str) else value
    if tree in (None, "", []) or isinstance(tree, bool):
        return tree
    value = from_env.get((path[-1], repr(tree)), tree)
    if value is not tree:  # what the environment gave: secret wherever the run shows it
        remember(tree)
    if isinstance(value, str) and _ENV_VARIABLE.fullmatch(value.replace("\\", "")):
        return value  # also as Hydra escapes it in a sweep job's overrides: $\{oc.env\:VAR\}
    remember(tree)
    return REDACTED


def _names_secret(segment: str) -> bool:
    name = re.sub(r"[_-]", "", segment)
    return segment == KEY or any(secret in name for secret in SECRET_NAMES)


def _save_private(path: Path, text: str) -> None:
    """Replaces `path` whole with `text`, readable by the user only."""
    write_atomically(path, lambda file: file.write(text.encode()))
