#!/usr/bin/env bash
# Fails when a C++ source is not formatted per .clang-format.
set -euo pipefail
cd "$(dirname "$0")/.."
files=$(git ls-files '*.h' '*.cpp' 2>/dev/null || find . -name '*.h' -o -name '*.cpp')
[ -z "$files" ] && exit 0
clang-format --dry-run -Werror $files
echo "format: ok ($(echo "$files" | wc -l) files)"
