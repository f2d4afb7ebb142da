# The two commands a new user needs: `make train` and `make test`. Both set up what is missing.
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export DQN_BRIDGE_PYTHON := $(abspath $(VPY))
export MIX_ENV ?= test
# The BEAM wants a UTF-8 locale for file names and terminal output.
export LANG ?= C.UTF-8
export ELIXIR_ERL_OPTIONS ?= +fnu

.PHONY: setup setup-python setup-elixir test test-python test-elixir train bench clean

setup: setup-python setup-elixir

setup-python: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

setup-elixir:
	@if command -v elixir >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Elixir/OTP from Debian..."; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq elixir >/dev/null; \
	else \
	  echo "elixir is missing: install Elixir >= 1.14 and OTP >= 25 (Debian: sudo apt-get install elixir), then rerun"; exit 1; \
	fi

test: setup
	$(VPY) -m pytest -q
	MIX_ENV=test mix test

test-python: setup-python
	$(VPY) -m pytest -q

test-elixir: setup
	MIX_ENV=test mix test

train: setup
	MIX_ENV=dev mix dqn.train --env CartPole-v1 --steps 20000 --seed 0 --name cartpole

bench: setup
	$(VPY) -m bridge bench solve
	$(VPY) -m bridge bench protocol --cpu 0
	MIX_ENV=dev mix dqn.bench --cpu 0

clean:
	rm -rf _build runs .pytest_cache
