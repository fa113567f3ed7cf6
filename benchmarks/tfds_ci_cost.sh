#!/usr/bin/env bash
# What tensorflow-cpu + tensorflow-datasets add to CI: fresh-venv install of the test extra
# with and without them (no pip cache, as on a fresh CI machine), then the tfds tests.
# Run: bash benchmarks/tfds_ci_cost.sh [workdir]   (needs internet to PyPI; ~8 min)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d)}"
mkdir -p "$WORK/src"
git -C "$ROOT" archive HEAD | tar -x -C "$WORK/src"
# the test extra without the two tfds lines = the "without" install
sed '/tensorflow-cpu>=\|tensorflow>=2.16; sys_platform ==\|^    tensorflow-datasets>=4.9$/d' \
    "$WORK/src/setup.cfg" > "$WORK/setup.nocfg" || true
timed() {  # name, venv, extra pip args...
  local name=$1 venv=$2; shift 2
  python3 -m venv "$venv" && "$venv/bin/pip" install -q --upgrade pip
  local s; s=$(date +%s)
  "$venv/bin/pip" install -q --no-cache-dir "$@"
  echo "$name install: $(( $(date +%s) - s )) s"
}
cp -r "$WORK/src" "$WORK/src_no_tf" && cp "$WORK/setup.nocfg" "$WORK/src_no_tf/setup.cfg"
timed "test extra without tensorflow" "$WORK/venv_base" "$WORK/src_no_tf[test]"
timed "test extra with tensorflow-cpu + tensorflow-datasets" "$WORK/venv_tf" "$WORK/src[test]"
cd "$WORK/src"
/usr/bin/time -f "tfds tests: %e s wall, %U s user, %S s sys" "$WORK/venv_tf/bin/python" -m pytest \
    tests/test_datasets_tfds_real.py tests/test_datasets_tfds.py tests/test_corruptions_tfds.py \
    -q -p no:cacheprovider
uptime
