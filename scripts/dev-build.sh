#!/usr/bin/env bash
# Developer loop: build igw._core with CMake into build/dev and drop the module next to the
# Python sources, so `PYTHONPATH=python` imports the fresh build. CI uses `pip install .`.
# Usage: scripts/dev-build.sh [--sanitize]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
build=build/dev
sanitize=OFF
if [[ "${1:-}" == "--sanitize" ]]; then sanitize=ON; build=build/asan; fi
version=$($py -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSKBUILD_PROJECT_NAME=igw -DSKBUILD_PROJECT_VERSION="$version" \
  -DIGW_SANITIZE=$sanitize -Dpybind11_DIR="$($py -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$(command -v $py)" >/dev/null
cmake --build "$build" -j2
if [[ $sanitize == OFF ]]; then
  cp "$build"/_core*.so python/igw/
fi
echo "built $(ls "$build"/_core*.so)"
