#!/bin/sh
# Open MPI's remote-shell agent for the namespace hosts of tests/hosts (plm_rsh_agent): instead
# of ssh, enter host HOST's network namespace with a UTS namespace of its own named HOST, and run
# the command line there through a shell, as sshd would.
# Usage (by mpirun): agent.sh [-x] HOST COMMAND...   Needs SHARDLOAD_HOSTS_PREFIX.
while [ "${1#-}" != "$1" ]; do shift; done  # ssh-style flags mpirun may pass
host=$1
shift
exec ip netns exec "${SHARDLOAD_HOSTS_PREFIX:?}-$host" unshare --uts \
  sh -c 'hostname "$0" && exec sh -c "$1"' "$host" "$*"
