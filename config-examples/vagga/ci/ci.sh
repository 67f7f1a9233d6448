#!/usr/bin/env bash
# The CI job of a vagga project (docs/vagga-ci.md). Run it from the project root:
#
#   bash ci.sh                       # vagga from PATH
#   VAGGA=/opt/vagga/vagga bash ci.sh
#
# Exit status: 0 when the tests pass; the test command's own status when they fail (128+n
# if it was killed by signal n); 121 when a container does not build; 1 when `vagga _doctor`
# finds the machine unable to run containers (its output names the fix).
set -euo pipefail

vagga=${VAGGA:-vagga}
# CI systems set CI already; it keeps vagga's output plain even under a pseudo-terminal.
export CI=${CI:-true}

echo "--- vagga _doctor"
"$vagga" _doctor

# Building first tells "the image does not build" apart from "the tests fail" in the log;
# a failed step's output is printed and kept in .vagga/.logs/<container>.failed.log.
echo "--- build"
"$vagga" -m --containers-only test

echo "--- vagga test"
exec "$vagga" test
