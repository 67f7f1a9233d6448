#!/usr/bin/env bash
# Retakes the screenshots docs/verwalter-ui.md shows: runs the UI tests (as root, for the
# follower's page) with VERWALTER_UI_DOCS=1, then shrinks the PNGs with pngquant
# (apt-get install pngquant) so they stay a few tens of kB each.
set -euo pipefail
cd "$(dirname "$0")/../../.."
VERWALTER_UI_DOCS=1 cargo nextest run -p verwalter --test ui
pngquant --force --skip-if-larger --ext .png --quality 60-85 docs/img/verwalter-ui/*.png
