#!/usr/bin/env bash
# Several hosts on one machine (tests/hosts/, needs root): network and UTS namespaces on a bridge
# of the test's own, MPI over TCP only. Runs the fault tests (a link cut during start-up, mid-load
# and mid-save, all ranks of one host SIGKILLed mid-save, a link that comes back), which print the
# measured times from the fault to each rank's error and to mpirun's end, and then the functional
# tests (also part of the test command). Arguments pick fault scenarios: startup load save kill
# back (default: all). Exit 0 when everything passed, 77 when namespaces are not permitted here
# (a skip, not a pass), 1 otherwise. Build first (scripts/build.sh).
set -uo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
BUILD_DIR=${BUILD_DIR:-build}
export SHARDLOAD_BIN=$PWD/$BUILD_DIR/shardload
export PYTHONPATH=$PWD/$BUILD_DIR/python${PYTHONPATH:+:$PYTHONPATH}
PY=${SHARDLOAD_PYTHON:-python3}
status=0
for t in test_host_faults test_hosts; do
  echo "== tests/hosts/$t.py"
  args=()
  [ "$t" = test_host_faults ] && args=("$@")
  timeout 1200 "$PY" "tests/hosts/$t.py" "${args[@]}"
  rc=$?
  case $rc in
    0) ;;
    77) [ $status = 0 ] && status=77 ;;
    *) status=1 ;;
  esac
done
exit $status
