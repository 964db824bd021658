#!/usr/bin/env bash
# The SARDINE recommender envs (sardine-rec 1.0.8) for the recommendation speed benchmark, in
# their own virtual environment so their pins never touch prefenv's. CPU torch goes in first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv-sardine"
. "$here/.venv-sardine/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet "sardine-rec==1.0.8"
python -c "import sardine, gymnasium; print('sardine ok, gymnasium', gymnasium.__version__)"
