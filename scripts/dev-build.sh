#!/usr/bin/env bash
# Developer loop: build igw._core with CMake into build/dev and drop the module next to the
# Python sources, so `PYTHONPATH=python` imports the fresh build. CI uses `pip install .`.
#
# Usage: scripts/dev-build.sh [--sanitize | --tsan]
#   --sanitize  AddressSanitizer + UBSan build in build/asan; the package is assembled in
#               build/asan/python/igw (sources + the instrumented module). Run tests with:
#     LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)" \
#     ASAN_OPTIONS=detect_leaks=0 \
#     PYTHONPATH=build/asan/python python -m pytest -p no:cacheprovider tests/core
#   --tsan      ThreadSanitizer build in build/tsan (same layout); run the stress tests with
#     LD_PRELOAD="$(gcc -print-file-name=libtsan.so) $(gcc -print-file-name=libstdc++.so)" \
#     PYTHONPATH=build/tsan/python python -m pytest -p no:cacheprovider tests/core/test_stress.py
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python}
build=build/dev
sanitize=OFF
extra=()
if [[ "${1:-}" == "--sanitize" ]]; then sanitize=ON; build=build/asan; fi
if [[ "${1:-}" == "--tsan" ]]; then
  build=build/tsan
  extra=(-DCMAKE_CXX_FLAGS="-fsanitize=thread -g" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=thread")
fi
version=$($py -c "import tomllib;print(tomllib.load(open('pyproject.toml','rb'))['project']['version'])")
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DSKBUILD_PROJECT_NAME=igw -DSKBUILD_PROJECT_VERSION="$version" \
  -DIGW_SANITIZE=$sanitize -Dpybind11_DIR="$($py -m pybind11 --cmakedir)" \
  -DPython_EXECUTABLE="$(command -v $py)" "${extra[@]}" >/dev/null
cmake --build "$build" -j2
if [[ $build == build/dev ]]; then
  # Other processes may have the module mapped: copy to a temporary name in the same directory
  # and rename over the old file, so they keep the old inode instead of seeing a half-written one.
  for so in "$build"/_core*.so; do
    name=$(basename "$so")
    tmp=$(mktemp "python/igw/.${name}.XXXXXX")
    cp "$so" "$tmp"
    chmod 755 "$tmp"
    mv -f "$tmp" "python/igw/$name"
  done
else
  rm -rf "$build/python" && mkdir -p "$build/python"
  cp -r python/igw "$build/python/igw"
  rm -f "$build"/python/igw/_core*.so
  cp "$build"/_core*.so "$build/python/igw/"
fi
echo "built $(ls "$build"/_core*.so)"
