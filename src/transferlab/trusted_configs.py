"""A config read back from a tracking store is data, never code: anyone who can log a run to
a shared store can plant one. Rerun, resume, export and source reuse read a run's recorded
config (`config.yaml`, `experiment.yaml`) only through `trusted_config`, which checks it
before anything is imported or built from it, in this order (after refusing a config whose
literal secrets were redacted: it cannot run as recorded):

1. Interpolations. Two kinds are kept, each as a whole value, and neither is evaluated
   while checking: a reference to another key of the same config (`${trainer.max_epochs}`:
   recorded so that the derived stages resolve it after their merge, as the first run
   did), and, under a key that names a secret (tracking.redaction.is_secret), one variable
   of the environment (`${oc.env:HF_TOKEN}`, as redaction records a secret given that
   way): it is read from the reader's own environment when the run starts, which is what
   a secret passed from the environment is for. Everything else is refused: `${oc.env:..}`
   under any other key (it would copy the reader's environment into a run name, a path,
   an error tag), `${oc.create:..}`, `${oc.decode:..}`, `${oc.select:..}`, custom
   resolvers, interpolations inside text and escaped `\\${` (live again once the value
   is copied).
2. Targets. Every `_target_` at any depth, in lists too, must be one that a config group
   defines and sit where that group puts one (`backbone._target_`,
   `callbacks.<name>._target_`): a `_target_` nested inside an option's keys is refused
   even where its value is allowed elsewhere. The groups are those of the installed
   transferlab (conf/, the studies in experiments/) and of the reading invocation's own
   search path (its `hydra.searchpath`, or `--searchpath` of rerun and export); what they
   define is read from Hydra's composition of every option, once per process.
3. The same validation as a new run (config.validate), on a copy that holds the reader's
   tracking URI and a placeholder for each value of the environment.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from transferlab.config import validate
from transferlab.errors import UserError
from transferlab.studies import STUDIES_PACKAGE
from transferlab.tracking.recorded import recorded_config
from transferlab.tracking.redaction import is_secret, refuse_redacted_secrets

if TYPE_CHECKING:
    from mlflow.entities import Run
    from mlflow.tracking import MlflowClient

CONFIG_PACKAGE = "pkg://transferlab.conf"
HYDRA_GROUP = "hydra"  # Hydra's own settings: never part of a run's recorded config
TARGET = "_target_"
_REFERENCE = re.compile(r"\$\{\.*[\w-]+(\.[\w-]+)*\}")  # ${a.b}, ${..a}: no resolver
# One variable, no default but null (a default would be a literal): as a secret is recorded
_SECRET_FROM_ENV = re.compile(r"\$\{\s*oc\.env\s*:\s*\w+\s*(,\s*null\s*)?\}")
FROM_ENVIRONMENT = "<read from the environment when the run starts>"
SEARCHPATH_HELP = (  # rerun's and export's --searchpath
    "a folder of your own configs (file:///abs/dir or pkg://module, as in hydra.searchpath) "
    "whose components the run may use; repeatable"
)
_GIVEN_SEARCH_PATH: ContextVar[tuple[str, ...]] = ContextVar("searchpath", default=())


@dataclass(frozen=True)
class Components:
    """What the config groups define: every `_target_` value, and the dotted path of each
    node that holds one (`backbone`, `callbacks.early_stopping`); and (node, `_target_`)
    pairs that the reader's own config names."""

    targets: frozenset[str | None]
    nodes: frozenset[str]
    named: frozenset[tuple[str, str | None]] = frozenset()

    def define(self, node: str, target: Any) -> bool:
        if not _named(target):  # an interpolation, a node, a list: never a component's name
            return False
        return (node, target) in self.named or (target in self.targets and node in self.nodes)


def trusted_config(
    client: MlflowClient,
    run: Run,
    name: str,
    missing: str,
    action: str | None = None,
    own: DictConfig | None = None,
) -> DictConfig:
    """The config file `name` the run recorded (tracking.recorded.STAGE_CONFIG or
    EXPERIMENT_CONFIG), refused in one line unless it passes the checks above; `action`
    (`rerun <id>`) names what a redacted secret prevents. `own`: the reading invocation's
    config (resume's command), whose components, at their nodes, are the reader's own
    (`+callbacks.x={_target_: ...}` typed again with `resume=`). Returned as recorded:
    references and secrets from the environment are resolved when it runs."""
    try:
        cfg = recorded_config(client, run, name, missing)
    except (yaml.YAMLError, OmegaConfBaseException) as err:  # damaged, or not YAML at all
        raise _unreadable(run, name, err) from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"run {run.info.run_id}'s {name} is not a config: {missing}")
    refuse_redacted_secrets(action or f"use run {run.info.run_id}'s {name}", cfg)
    checked = OmegaConf.create(_checkable(OmegaConf.to_container(cfg), ""))
    try:
        values = OmegaConf.to_container(checked, resolve=True)
    except OmegaConfBaseException as err:  # a reference to no key, or a cycle
        raise _unreadable(run, name, err) from None
    components = defined_components(reading_search_path())
    if own is not None:
        named = (pair for pair in target_nodes(OmegaConf.to_container(own)) if _named(pair[1]))
        components = dataclasses.replace(components, named=frozenset(named))
    refuse_undefined_targets(values, components)
    if OmegaConf.is_dict(checked.get("tracking")):
        checked.tracking.uri = client.tracking_uri  # validation opens the reader's store only
    validate(checked)
    return cfg


def _unreadable(run: Run, name: str, error: Exception) -> UserError:
    reason = str(error).strip().partition("\n")[0]
    return UserError(f"run {run.info.run_id}'s {name} cannot be read: {reason}")


def _checkable(tree: Any, path: str) -> Any:
    """`tree` with each secret read from the environment replaced by a placeholder; any
    other interpolation than a reference to its own keys refused (see the module's 1.)."""
    if isinstance(tree, dict):
        return {key: _checkable(value, _child(path, key)) for key, value in tree.items()}
    if isinstance(tree, list):
        return [_checkable(value, f"{path}[{i}]") for i, value in enumerate(tree)]
    if not isinstance(tree, str) or "${" not in tree or _REFERENCE.fullmatch(tree):
        return tree
    if _SECRET_FROM_ENV.fullmatch(tree) and is_secret(path):
        return FROM_ENVIRONMENT
    raise UserError(
        f"{path}={tree} is not evaluated: a recorded config may only refer to its own keys "
        "(${key}) or read a secret's key from the environment (${oc.env:VAR}); not building it"
    )


def refuse_undefined_targets(values: Any, components: Components) -> None:
    """Every `_target_` in `values` (a config as plain data) must be one a config group
    defines, at a node where a group puts one."""
    for node, target in target_nodes(values):
        if not components.define(node, target):
            key = _child(node, TARGET)
            raise UserError(
                f"{key}={target} is not a component any config group defines; not building it"
            )


def target_nodes(tree: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, `_target_` value) of every node of `tree` that holds a `_target_`, at
    any depth, lists included (`a.b[0]`)."""
    if isinstance(tree, dict):
        if TARGET in tree:
            yield path, tree[TARGET]
        children: Iterable = ((_child(path, key), value) for key, value in tree.items())
    elif isinstance(tree, list):
        children = ((f"{path}[{i}]", value) for i, value in enumerate(tree))
    else:
        return
    for child, value in children:
        yield from target_nodes(value, child)


def _child(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


# --- the search path -----------------------------------------------------------------------


def reading_search_path() -> tuple[str, ...]:
    """The reader's own config folders: the running Hydra app's `hydra.searchpath`, and those
    given to rerun or export (`searching`)."""
    from hydra.core.hydra_config import HydraConfig

    own = tuple(HydraConfig.get().searchpath) if HydraConfig.initialized() else ()
    return (*own, *_GIVEN_SEARCH_PATH.get())


@contextmanager
def searching(searchpath: Iterable[str]) -> Iterator[None]:
    """Within: the user's config folders `searchpath` (Hydra search path entries,
    `file:///abs/dir` or `pkg://module`) also define components, for every config read
    back, source reuse's included."""
    token = _GIVEN_SEARCH_PATH.set((*_GIVEN_SEARCH_PATH.get(), *searchpath))
    try:
        yield
    finally:
        _GIVEN_SEARCH_PATH.reset(token)


# --- what the config groups define -----------------------------------------------------------


@functools.cache
def defined_components(searchpath: tuple[str, ...] = ()) -> Components:
    """Composed by Hydra, as a run composes them: each option of each group (but Hydra's
    own) at its package, one option of every group per composition; then each primary
    config (train, the studies). An option that does not compose defines nothing."""
    from hydra.core.object_type import ObjectType

    entries = ",".join(_quoted(entry) for entry in (CONFIG_PACKAGE, STUDIES_PACKAGE, *searchpath))
    where = f"hydra.searchpath=[{entries}]"
    targets: set[str | None] = {None}
    nodes: set[str] = set()
    with _config_loader() as loader:
        options = _group_options(loader, "", where)
        rounds = max(map(len, options.values()), default=0)
        for i in range(rounds):
            chosen = [f"+{group}={names[i]}" for group, names in options.items() if i < len(names)]
            _add_composed(None, [where], chosen, targets, nodes)
        for primary in loader.get_group_options("", ObjectType.CONFIG, overrides=[where]):
            if not primary.startswith("_"):  # Hydra's _dummy_empty_config_
                _add_composed(primary, [where], [], targets, nodes)
    return Components(frozenset(targets), frozenset(nodes))


@contextmanager
def _config_loader() -> Iterator[Any]:
    """Hydra's config loader: the running app's, else one of our own for the while."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield GlobalHydra.instance().config_loader()
        return
    with initialize_config_module("transferlab.conf", version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def _group_options(loader: Any, parent: str, where: str) -> dict[str, list[str]]:
    """Every group under `parent` (nested ones too, Hydra's own left out) -> its options."""
    from hydra.core.object_type import ObjectType

    found = {}
    for name in loader.get_group_options(parent, ObjectType.GROUP, overrides=[where]):
        group = f"{parent}/{name}" if parent else name
        if group == HYDRA_GROUP:
            continue
        found[group] = loader.get_group_options(group, ObjectType.CONFIG, overrides=[where])
        found.update(_group_options(loader, group, where))
    return found


def _add_composed(
    primary: str | None, where: list[str], chosen: list[str], targets: set, nodes: set
) -> None:
    """Adds what the composition defines; options that do not compose together are
    composed one at a time."""
    from hydra import compose
    from hydra.errors import HydraException

    try:
        composed = compose(primary, overrides=[*where, *chosen])
    except (HydraException, OmegaConfBaseException, yaml.YAMLError):
        if len(chosen) > 1:
            for option in chosen:
                _add_composed(primary, where, [option], targets, nodes)
        return
    for node, target in target_nodes(OmegaConf.to_container(composed)):
        if node and _named(target):  # the root is never built
            targets.add(target)
            nodes.add(node)


def _named(target: Any) -> bool:
    """None (nothing built) or a literal name: no interpolation, not missing."""
    return target is None or (isinstance(target, str) and "${" not in target and target != MISSING)


def _quoted(entry: str) -> str:
    """A search path entry as one quoted value of Hydra's override grammar."""
    return "'" + entry.replace("'", "\\'") + "'"
