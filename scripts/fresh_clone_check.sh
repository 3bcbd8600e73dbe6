#!/usr/bin/env bash
# The newcomer path, as CI proves it: clone HEAD into an empty temporary folder (nothing beside it: no ../shared, no
# .venv, no data), run the README's first command with the smaller profile, then check that git and DVC are clean.
#
#   bash scripts/fresh_clone_check.sh [PROFILE]     # PROFILE defaults to micro; tiny-cpu is the README's own
#
# With tiny-cpu every DVC stage must be up to date after the run (the job reproduces dvc.lock); with a smaller
# profile the data stages must be (trace, validate, build: they do not depend on the profile).
set -euo pipefail
profile=${1:-micro}
src=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/stepcode-newcomer-XXXXXX")
trap 'rm -rf "$work"' EXIT
git clone -q "$src" "$work/stepcode"
cd "$work/stepcode"
echo "fresh clone of $(git rev-parse --short HEAD) in $work/stepcode; profile $profile"

start=$SECONDS
bash scripts/setup.sh
echo "setup: $((SECONDS - start)) s"
start=$SECONDS
.venv/bin/stepcode pipeline --profile "$profile"
echo "main job ($profile): $((SECONDS - start)) s"

changed=$(git status --porcelain)
if [ -n "$changed" ]; then
  echo "FAIL: the main job left files git does not ignore or changed tracked ones:"; echo "$changed"
  git diff --stat; exit 1
fi
if [ "$profile" = tiny-cpu ]; then targets=(); else targets=(data.dvc trace validate build); fi
status=$(.venv/bin/dvc status "${targets[@]}")
echo "$status"
if ! grep -q "up to date" <<<"$status"; then
  echo "FAIL: dvc status is not clean after the main job"; exit 1
fi
echo "OK: the README's first command works on a fresh clone; git and DVC are clean after it"
