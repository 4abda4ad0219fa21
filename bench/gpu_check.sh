#!/usr/bin/env bash
# transferlab on a CUDA GPU in under 5 minutes (see bench/gpu_check.py): resnet50 throughput and
# peak memory against a plain PyTorch loop, eager and compiled; five freeze strategies on a
# CIFAR-10-sized task end to end with MLflow; a 2-epoch digits run with every artifact. One
# table, and the records in bench/results/gpu_check.json (--json FILE: elsewhere).
#
#   bash bench/gpu_check.sh [--cpu] [--wheels DIR] [--python PY] [gpu_check.py options]
#
# Python: PY, else $TRANSFERLAB_PYTHON, else this repo's .venv, else the machine's `python3`;
# it needs torch and pytorch-lightning. What else a run imports and is missing (hydra-core,
# mlflow, optuna, peft, psutil, ...) is installed from the wheels in DIR (or
# $TRANSFERLAB_WHEELS) with `pip install --no-index --find-links DIR`, offline: DIR must hold
# them and their dependencies. transferlab itself need not be installed: when it is not
# importable it is run from this checkout.
# --cpu: a dry run on the CPU at tiny sizes, through the same code (~70 s on 2 busy cores).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS="${TRANSFERLAB_WHEELS:-}"
PY="${TRANSFERLAB_PYTHON:-}"
ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --wheels=*) WHEELS="${1#*=}"; shift ;;
        --python) PY="$2"; shift 2 ;;
        --python=*) PY="${1#*=}"; shift ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
if [ -z "$PY" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PY="$REPO/.venv/bin/python"; else PY="python3"; fi
fi
echo "gpu_check: Python $("$PY" -c 'import sys; print(sys.version.split()[0], sys.executable)')"

if ! "$PY" -c "import importlib.util as u; assert u.find_spec('torch') and u.find_spec('pytorch_lightning')" 2>/dev/null; then
    echo "error: $PY has no torch and pytorch-lightning; pass --python PY with both" >&2
    exit 1
fi

# Import name -> what pip installs: what transferlab itself imports in the check's runs (torch
# and Lightning are the machine's own). psutil and pynvml: MLflow's system metrics, on by
# default on a GPU (pynvml: the GPU's); peft: freeze=lora; skops: the classical heads' module.
NEEDED="hydra:hydra-core omegaconf:omegaconf mlflow:mlflow optuna:optuna sqlalchemy:sqlalchemy
torchvision:torchvision torchmetrics:torchmetrics sklearn:scikit-learn matplotlib:matplotlib
rich:rich joblib:joblib psutil:psutil pynvml:nvidia-ml-py peft:peft skops:skops pandas:pandas
PIL:pillow scipy:scipy yaml:pyyaml"
missing() {  # one process: finding a module does not import it
    "$PY" - $NEEDED <<'PYTHON'
import importlib.util, sys
print(" ".join(p.split(":")[1] for p in sys.argv[1:] if not importlib.util.find_spec(p.split(":")[0])))
PYTHON
}
MISSING="$(missing)"
if [ -n "${MISSING// /}" ]; then
    if [ -z "$WHEELS" ]; then
        echo "error: $PY lacks: $MISSING; pass --wheels DIR (or TRANSFERLAB_WHEELS=DIR) with" \
            "wheels of them and their dependencies, e.g. from 'pip download -d DIR $MISSING'" >&2
        exit 1
    fi
    echo "gpu_check: installing $MISSING from $WHEELS"
    # shellcheck disable=SC2086  # one word per package
    "$PY" -m pip install --quiet --no-index --find-links "$WHEELS" $MISSING
    MISSING="$(missing)"
    if [ -n "${MISSING// /}" ]; then
        echo "error: still missing after the install: $MISSING" >&2
        exit 1
    fi
fi

# transferlab from this checkout when it is not installed: a folder of links laid out as
# the wheel lays it out (the configs live in conf/ but ship as the package transferlab.conf).
if ! (cd / && "$PY" -c "import transferlab.conf, transferlab.experiments" 2>/dev/null); then
    SITE="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check-site.XXXXXX")"
    trap 'rm -rf "$SITE"' EXIT
    mkdir "$SITE/transferlab"
    ln -s "$REPO"/src/transferlab/* "$SITE/transferlab/"
    ln -s "$REPO/conf" "$SITE/transferlab/conf"
    ln -s "$REPO/experiments" "$SITE/transferlab/experiments"
    ln -s "$REPO/src/hydra_plugins" "$SITE/hydra_plugins"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "gpu_check: transferlab is not installed; running it from $REPO"
fi

export PYTHONUNBUFFERED=1
"$PY" "$REPO/bench/gpu_check.py" "${ARGS[@]+"${ARGS[@]}"}"
