#!/bin/sh
# Run a command (`make test`: the suite) in a network namespace of its own, as
# root: loopback, and a veth interface whose address stands for the host's LAN
# address (tests/integration/test_cli.py filters on one). The daemons the tests
# start then see the tests' sockets alone, not every connection of the machine.
# Without veth support the LAN address sits on lo (still not a loopback address).
set -e
exec unshare --net sh -c '
  ip link set lo up
  if ip link add nmlan0 type veth peer name nmlan1 2>/dev/null; then
    ip addr add 10.99.0.1/24 dev nmlan0 && ip link set nmlan1 up && ip link set nmlan0 up
  else
    ip addr add 10.99.0.1/24 dev lo
  fi
  exec "$@"' in_netns "$@"
