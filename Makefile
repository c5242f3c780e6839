# netmon: `make run` sets up and starts netmond + opens `netmonctl top`;
# `make test` sets up and runs the whole test suite (what CI runs).
# The commands live in $(VENV)/bin: `. .venv/bin/activate` puts them on PATH.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

BPF_OBJ := netmond/backends/ebpf/netmon.bpf.o

.PHONY: install run daemon stop test bench clean bpf

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# This checkout was installed as "netmon" before the rename to "netmond".
	$(BIN)/pip uninstall -q -y netmon 2>/dev/null || true
	$(BIN)/pip install -q -e '.[test,metrics]'
	touch $(STAMP)

install: $(STAMP) bpf

# eBPF root mode's object (needs clang + libbpf-dev; skipped with a note without them).
bpf: $(BPF_OBJ)

$(BPF_OBJ): netmond/backends/ebpf/netmon.bpf.c netmond/backends/ebpf/build.py
	$(PYTHON) netmond/backends/ebpf/build.py

# Start the daemon in the background (user mode unless run as root) unless one
# answers already, then open the live view. `make run` stops before `top` when
# netmond did not come up; quitting `top` leaves the daemon running (make stop).
run: daemon
	@$(BIN)/netmonctl top; rc=$$?; \
	  echo "netmond keeps running in the background: 'make stop' stops it"; exit $$rc

# NETMON_SOCKET, if set, is the socket netmond listens on and netmonctl asks.
# Fails, with the log's last line, if netmond exits or does not answer within
# DAEMON_WAIT seconds (then it is stopped: a daemon nobody reaches is no use).
DAEMON_WAIT ?= 15
daemon: install
	@if $(BIN)/netmonctl status >/dev/null 2>&1; then echo "netmond already answers"; exit 0; fi; \
	  state="$${XDG_STATE_HOME:-$$HOME/.local/state}/netmon"; log="$$state/netmond.log"; \
	  mkdir -p "$$state" || exit 1; \
	  echo "--- make daemon $$(date '+%F %T')" >>"$$log"; \
	  nohup $(BIN)/netmond $${NETMON_SOCKET:+--socket "$$NETMON_SOCKET"} >>"$$log" 2>&1 & pid=$$!; \
	  end=$$(( $$(date +%s) + $(DAEMON_WAIT) )); \
	  while kill -0 $$pid 2>/dev/null && [ $$(date +%s) -le $$end ]; do \
	    if $(BIN)/netmonctl status >/dev/null 2>&1; then \
	      echo "netmond started (pid $$pid, log: $$log)"; exit 0; fi; \
	    sleep 0.2; \
	  done; \
	  if kill -0 $$pid 2>/dev/null; then \
	    kill -TERM $$pid; why="did not answer within $(DAEMON_WAIT) s (stopped it)"; \
	  else why="exited"; fi; \
	  echo "netmond $$why; last line of $$log:" >&2; \
	  tail -n 1 "$$log" >&2; exit 1

# Ask the daemon that answers for its pid, then SIGTERM it (it removes its socket).
stop:
	@pid=$$($(BIN)/netmonctl status --json 2>/dev/null | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["pid"])' 2>/dev/null) \
	  && kill -TERM $$pid && echo "netmond (pid $$pid) stopped" || echo "no netmond answers"

# mypy first (a few seconds; [tool.mypy] in pyproject.toml says what and how strictly).
# As root (where unshare works), the suite runs in a network namespace of its
# own (tests/in_netns.sh): the daemons it starts see the tests' sockets alone.
# On a busy machine every other program's connections made their ticks slow
# and the tests' waits time out. NETMON_TEST_NETNS=0 runs it in the machine's.
PYTEST := $(BIN)/pytest -q -p no:cacheprovider
test: install
	$(BIN)/mypy
	@if [ "$$(id -u)" = 0 ] && [ "$${NETMON_TEST_NETNS:-1}" != 0 ] && command -v ip >/dev/null \
	    && unshare --net true 2>/dev/null; then \
	  echo "tests run in a network namespace of their own (NETMON_TEST_NETNS=0: not)"; \
	  exec tests/in_netns.sh $(PYTEST); \
	else exec $(PYTEST); fi

# BENCH_SIZE=small skips the 50,000 and 100,000 socket rows (minutes, not ~20).
BENCH_SIZE ?= large
bench: install
	$(BIN)/python bench/run_all.py --size $(BENCH_SIZE)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache $(BPF_OBJ)
