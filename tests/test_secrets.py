"""Secrets never leave the machine: a sweep given a secret of every kind (a dict-valued
override, a sweep of dicts, each secret name in any case, credentials inside a URL, a value
read from the environment) and a job failing with a secret in its exception; then every
byte of the MLflow store, every file under the output and sweep folders, stdout and stderr
hold none of them. The Optuna sweeper's records too."""

from __future__ import annotations

import stat
from pathlib import Path

from mlflow.artifacts import download_artifacts
from omegaconf import OmegaConf

from transferlab.data.datasets import Digits
from transferlab.tracking.redaction import REDACTED

NAMES = ("auth", "bearer", "session", "cookie", "pass", "pwd", "key", "api_key", "apikey",
         "access_key", "private_key", "passwd", "password", "secret", "token")  # fmt: skip
BY_NAME = {name: f"Zq7{name.replace('_', '')}Leak{i}" for i, name in enumerate(NAMES)}
UPPER = "Zq7UpperLeak"  # under AUTH_HEADER
CREDENTIALS = "Zq7CredentialsLeak"  # under credentials.user
URL_PASSWORD = "Zq7UrlLeak"  # in https://user:PASSWORD@host
FROM_ENV = "Zq7EnvLeak"  # what ${oc.env:TL_SECRET} reads
IN_DICT, IN_FAILING_DICT = "Zq7DictLeak", "Zq7FailingDictLeak"  # each job's extra.token
SECRETS = (*BY_NAME.values(), UPPER, CREDENTIALS, URL_PASSWORD, FROM_ENV, IN_DICT, IN_FAILING_DICT)
OVERRIDES = (
    "dataset._target_=tests.test_secrets.SecretDigits",
    *(f"+dataset.{name}={value}" for name, value in BY_NAME.items()),
    f"+dataset.AUTH_HEADER={UPPER}",
    f"+dataset.credentials={{user:{CREDENTIALS}}}",
    f"+dataset.url=https://user:{URL_PASSWORD}@data.example.invalid/digits",
    "+dataset.from_env=${oc.env:TL_SECRET}",
    "+dataset.TOKEN_FROM_ENV=${oc.env:TL_SECRET}",
)
SWEEP = (
    f"+dataset.extra=choice({{token:{IN_DICT},fail:false}},{{token:{IN_FAILING_DICT},fail:true}})"
)


class SecretDigits(Digits):
    """The digits behind credentials: refuses to load when `extra.fail`, naming them."""

    given: list[dict] = []  # noqa: RUF012 - what each instance was given, to prove use

    def __init__(self, **options):
        self.options = options
        SecretDigits.given.append(options)

    def load(self, preprocessing):
        extra, url = self.options["extra"], self.options["url"]
        if extra["fail"]:
            raise ConnectionError(f"{url} refused token {extra['token']} ({self.options})")
        return super().load(preprocessing)


def leaks(texts: dict[str, bytes]) -> list[str]:
    """'<where>: <secret>' for each secret found."""
    return [f"{where}: {s}" for where, data in texts.items() for s in SECRETS if s.encode() in data]


def files_under(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders for p in f.rglob("*") if p.is_file()}


def test_a_sweep_leaks_no_secret_anywhere(
    multirun, runs, tracking_uri, tmp_path, monkeypatch, capfd
):
    monkeypatch.setenv("TL_SECRET", FROM_ENV)
    monkeypatch.chdir(tmp_path)  # whatever is written relative to the working dir
    SecretDigits.given.clear()
    assert multirun(*OVERRIDES, SWEEP) == 1  # one job failed
    optuna_sweep = tmp_path / "optuna"
    optuna = [
        "hydra/sweeper=optuna",
        "hydra.sweeper.n_trials=1",
        f"hydra.sweeper.storage=sqlite:///{tmp_path / 'optuna.db'}",
        f"hydra.sweep.dir='{optuna_sweep}'",
        "+dataset.session_choice=choice(alpha,beta)",  # searched: in Optuna's own storage
        f"+dataset.extra={{token:{IN_DICT},fail:false}}",
    ]
    assert multirun(*OVERRIDES, *optuna) == 0

    used = {value for options in SecretDigits.given for value in map(str, options.values())}
    assert set(BY_NAME.values()) <= used and FROM_ENV in used  # every secret reached the jobs
    assert {o["extra"]["token"] for o in SecretDigits.given} == {IN_DICT, IN_FAILING_DICT}
    recorded = runs()
    assert sorted(r.info.status for r in recorded).count("FAILED") == 1
    (failed,) = [r for r in recorded if r.info.status == "FAILED"]
    assert failed.data.tags["error"].startswith("ConnectionError: https://<redacted>@data")
    assert f"refused token {REDACTED}" in failed.data.tags["error"]
    results = OmegaConf.load(optuna_sweep / "optimization_results.yaml")
    assert results.best_params == {"dataset.session_choice": REDACTED}
    for run in recorded:  # every artifact, downloaded as a reader would get it
        download_artifacts(
            run_id=run.info.run_id, dst_path=str(tmp_path / "read" / run.info.run_id),
            tracking_uri=tracking_uri,
        )  # fmt: skip

    hydra_files = sorted(tmp_path.glob("**/.hydra/*.yaml"))
    sweep_configs = [tmp_path / "sweep" / "multirun.yaml", optuna_sweep / "multirun.yaml"]
    assert len(hydra_files) == 3 * 3 and all(p.is_file() for p in sweep_configs)
    for path in [*hydra_files, *sweep_configs]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert REDACTED in (tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml").read_text()
    store = Path(tracking_uri.removeprefix("sqlite:///")).parent
    out, err = capfd.readouterr()
    texts = {**files_under(store, tmp_path), "stdout": out.encode(), "stderr": err.encode()}
    assert f"with {{'dataset.session_choice': '{REDACTED}'}}" in out  # Optuna's best, printed
    assert leaks(texts) == [], "\n".join(leaks(texts))
