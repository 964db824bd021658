#!/usr/bin/env bash
# Build the peer library's own virtual environment: imitation 1.0.1 pins gymnasium 0.29 and
# SB3 2.2, which cannot share prefenv's environment. CPU torch is installed first.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
python3 -m venv "$here/.venv-imitation"
. "$here/.venv-imitation/bin/activate"
python -m pip install --quiet --upgrade pip
python -m pip install --quiet torch==2.13.0
python -m pip install --quiet "imitation==1.0.1" "gymnasium[mujoco]~=0.29.1" "mujoco>=2.3.7,<3"
python -c "import imitation, gymnasium, stable_baselines3, mujoco; print('imitation', imitation.__version__, 'gymnasium', gymnasium.__version__, 'sb3', stable_baselines3.__version__, 'mujoco', mujoco.__version__)"
