# netmon: `make run` sets up and starts netmond + opens `netmonctl top`;
# `make test` sets up and runs the whole test suite (what CI runs).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install run daemon stop test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,metrics]'
	touch $(STAMP)

install: $(STAMP)

# Start the daemon in the background (user mode unless run as root) if none
# answers yet, then open the live view.
run: install daemon
	$(BIN)/netmonctl top

daemon: install
	@$(BIN)/netmonctl status >/dev/null 2>&1 || { \
	  mkdir -p "$${XDG_STATE_HOME:-$$HOME/.local/state}/netmon"; \
	  log="$${XDG_STATE_HOME:-$$HOME/.local/state}/netmon/netmond.log"; \
	  nohup $(BIN)/netmond >>"$$log" 2>&1 & \
	  for i in $$(seq 50); do $(BIN)/netmonctl status >/dev/null 2>&1 && break; sleep 0.1; done; \
	  echo "netmond started (log: $$log)"; }

# Ask the daemon that answers for its pid, then SIGTERM it (it removes its socket).
stop:
	@pid=$$($(BIN)/netmonctl status --json 2>/dev/null | $(BIN)/python -c 'import json,sys; print(json.load(sys.stdin)["pid"])' 2>/dev/null) \
	  && kill -TERM $$pid && echo "netmond (pid $$pid) stopped" || echo "no netmond answers"

test: install
	$(BIN)/pytest -q -p no:cacheprovider

bench: install
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
