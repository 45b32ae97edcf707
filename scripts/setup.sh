#!/usr/bin/env bash
# Create .venv (if missing) and install pyro_dwp with its dev tools into it.
# torch 2.14.1 / torchvision 0.29.1 are pinned here because they are the builds this project's
# machines hold locally; the package itself accepts any torch>=2.1,<3.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e ".[dev]"
