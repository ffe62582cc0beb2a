#!/usr/bin/env bash
# Fails when a source includes across a boundary of DESIGN.md §4: a format folder of io/ (h5, pt,
# safetensors, dcp) includes io/'s root and core/ only, never a sibling folder; io/commit/ takes
# nothing from the formats but the commit marker's name (io/h5/format.h); io/, core/ and
# sharding/ never include loader/ or transport/; core/ includes core/ only; sharding/ includes
# no io/.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=0
flag() { echo "layers: $1 includes $2 ($3)"; bad=1; }
while IFS= read -r file; do
  dir=${file%/*}
  while IFS= read -r inc; do
    case "$dir" in
      io/h5|io/pt|io/safetensors|io/dcp)
        case "$inc" in
          core/*) ;;
          "$dir"/*) ;;
          io/*/*) flag "$file" "$inc" "a format folder includes io/'s root and core/ only" ;;
          io/*) ;;
          *) flag "$file" "$inc" "a format folder includes io/'s root and core/ only" ;;
        esac ;;
      io/commit)
        case "$inc" in
          core/* | io/commit/* | io/h5/format.h) ;;
          io/*/*) flag "$file" "$inc" "io/commit/ takes only the commit marker's name from a format" ;;
          io/*) ;;
          *) flag "$file" "$inc" "io/commit/ includes io/ and core/ only" ;;
        esac ;;
      io)
        case "$inc" in
          loader/* | transport/* | sharding/*) flag "$file" "$inc" "io/ knows no ranks" ;;
        esac ;;
      core)
        case "$inc" in
          core/*) ;;
          *) flag "$file" "$inc" "core/ includes core/ only" ;;
        esac ;;
      sharding)
        case "$inc" in
          io/* | loader/* | transport/*) flag "$file" "$inc" "sharding/ is pure geometry" ;;
        esac ;;
    esac
  done < <(sed -n 's/^#include "\([^"]*\)".*/\1/p' "$file")
done < <(git ls-files 'core/*' 'io/*' 'sharding/*' | grep -E '\.(h|cpp)$')
[ "$bad" = 0 ] && echo "layers: ok"
exit "$bad"
