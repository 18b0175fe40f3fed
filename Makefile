# The two commands: `make run` and `make test`. Both install what is missing
# (Debian packages, CPython 3.13.5 default + free-threaded builds in a cache
# outside the clone), configure and build; then serve or test.
#
# PGO= picks how the bundled CPythons are optimized, as distributions build theirs
# (scripts/build-python.sh): short (the default) is profile-guided optimization trained
# by scripts/pgo_task.py, about 7.5 minutes a build on 2 cores; full (or 1) adds LTO and
# upstream's profile task, about 25 minutes; 0 is plain, about 5. A build serves later
# runs that ask for the same or less (docs/benchmarks.md); `make image` passes it on.
#
# Use a CPython you already have (>= 3.12, --enable-shared) instead of
# building one:   make run GILGAMESH_PYTHON=/opt/python3.13/bin/python3.13
# (add GILGAMESH_PYTHON_FT=/path/to/python3.13t for the free-threaded build).

SHELL := /bin/bash
COMMA := ,
CACHE_DIR ?= $(or $(GILGAMESH_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/gilgamesh)
PY_ROOT := $(CACHE_DIR)/python-3.13.5
# SANITIZE=1 builds with ASan + UBSan into its own directory (build-asan), beside the normal one.
BUILD_DIR ?= $(if $(SANITIZE),build-asan,build)
# Left out of the sanitized test run: `loadtest` only measures speed (wrk against a server
# slowed 2-3x by the sanitizers says nothing), `container` builds an image of the normal
# build, and `build_python` checks a shell script. Everything else (unit, blackbox, browser)
# runs sanitized.
SANITIZE_EXCLUDE ?= ^(loadtest|container|build_python)$$
HOST ?= 127.0.0.1
PORT ?= 8080
ARGS ?=
PREFIX ?= /usr/local
PGO ?= $(GILGAMESH_PYTHON_PGO)
# Exported: image.sh (make image, the container test) asks the image's build for the same.
export GILGAMESH_PYTHON_PGO := $(PGO)
BUILD_PYTHON = GILGAMESH_CACHE=$(CACHE_DIR) bash scripts/build-python.sh

# `make run` builds only what serving needs: the default CPython and `gilgamesh`. The
# free-threaded build (its CPython and gilgamesh-ft) comes when it is asked for: ARGS naming
# free-threaded, or FT=1. `make build` and `make test` build everything.
FT ?= $(if $(findstring free-threaded,$(ARGS)),1,)
ifeq ($(strip $(GILGAMESH_PYTHON)),)
  BUNDLED_PYTHON := 1
  GILGAMESH_PYTHON := $(PY_ROOT)/default/bin/python3.13
  GILGAMESH_PYTHON_FT ?= $(PY_ROOT)/free-threaded/bin/python3.13t
else
  BUNDLED_PYTHON :=
  GILGAMESH_PYTHON_FT ?=
endif

# Recursively expanded: configure sees the free-threaded Python only once it exists.
CMAKE_FLAGS = -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DGILGAMESH_PYTHON=$(GILGAMESH_PYTHON) -DGILGAMESH_PYTHON_FT=$(wildcard $(GILGAMESH_PYTHON_FT)) \
  -DGILGAMESH_WERROR=$(if $(CI),ON,OFF) -DGILGAMESH_SANITIZE=$(if $(SANITIZE),ON,OFF)

.PHONY: all setup deps python python-serve web configure configure-serve build build-serve run test fuzz bench bench-quick bench-asgi bench-ws bench-app soak clean install image image-test trixie-site parser-vectors

all: build

setup: deps python web

deps:
	@bash scripts/install-deps.sh

# The dashboard's npm packages (uPlot, embedded at build time; playwright-core for the browser test).
web: deps
	@bash scripts/fetch-web-deps.sh

python: deps
	@if [ -n "$(BUNDLED_PYTHON)" ]; then $(BUILD_PYTHON) default free-threaded; fi

python-serve: deps
	@if [ -n "$(BUNDLED_PYTHON)" ]; then $(BUILD_PYTHON) default $(if $(FT),free-threaded,); fi

configure: setup
	@cmake -S . -B $(BUILD_DIR) $(CMAKE_FLAGS) >/dev/null

configure-serve: deps python-serve web
	@cmake -S . -B $(BUILD_DIR) $(CMAKE_FLAGS) >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j$$(nproc)

# The serving binaries only: no tests, fuzz replays or test extensions.
build-serve: configure-serve
	@cmake --build $(BUILD_DIR) -j$$(nproc) --target gilgamesh $(if $(FT),gilgamesh-ft,)

run: build-serve
	$(BUILD_DIR)/gilgamesh --app handlers.demo --host $(HOST) --port $(PORT) $(ARGS)

# Debian trixie's python3-* packages (built for Python 3.13, C extensions included) unpacked
# into a site folder in the cache, for --pythonpath; no PyPI. The real-packages suite's list,
# or yours: make trixie-site TRIXIE_PACKAGES="python3-flask python3-lxml". Prints the folder.
TRIXIE_PACKAGES ?=
trixie-site: deps
	@GILGAMESH_CACHE=$(CACHE_DIR) bash scripts/fetch-trixie-site.sh $(TRIXIE_PACKAGES)

# gunicorn's HTTP parser vectors, from Debian trixie's gunicorn source package (tests/blackbox/test_parser_vectors.py).
parser-vectors: deps
	@GILGAMESH_CACHE=$(CACHE_DIR) bash scripts/fetch-parser-vectors.sh >/dev/null

test: trixie-site parser-vectors
test: build
	cd $(BUILD_DIR) && ctest --output-on-failure --timeout 1800 \
	  $(if $(SANITIZE),-E '$(SANITIZE_EXCLUDE)') $(if $(CTEST_ARGS),$(CTEST_ARGS),)

# One relocatable tree: PREFIX/bin/gilgamesh[-ft], the two CPython prefixes under
# PREFIX/lib/gilgamesh/ (stdlib, no tests or headers), PREFIX/share/gilgamesh/handlers.
install: build
	cmake --install $(BUILD_DIR) --prefix $(PREFIX) --strip

# The container image (podman/buildah, no Docker daemon): gilgamesh:latest in local storage.
image: deps python web
	bash scripts/image.sh

# Builds the image if needed, then runs it as containers: tests/container.
image-test: deps python web
	bash scripts/image-test.sh

bench: build
	/usr/bin/python3 loadtest/run --binary $(BUILD_DIR)/gilgamesh $(BENCH_ARGS)

bench-quick: build
	/usr/bin/python3 loadtest/run --quick --peers gunicorn,gunicorn-gthread,uwsgi,nginx --binary $(BUILD_DIR)/gilgamesh $(BENCH_ARGS)

# ASGI: the four ASGI workloads (loadtest/asgi_bench.py: raw ASGI and Starlette plaintext, fib(25),
# 1000 connections sleeping 1 s) at 2 workers, against uvicorn and Hypercorn.
bench-asgi: build
	/usr/bin/python3 loadtest/run --workloads asgi --workers 2 --peers uvicorn,hypercorn --binary $(BUILD_DIR)/gilgamesh $(BENCH_ARGS)

# WebSocket echo: round trips/s and latency on the same app's /ws/echo (32-byte text, 64 KiB binary;
# 50 connections by loadtest/tools/ws_echo_load.py) at 2 workers, against uvicorn and Hypercorn.
bench-ws: build
	/usr/bin/python3 loadtest/run --workloads ws --workers 2 --peers uvicorn,hypercorn --binary $(BUILD_DIR)/gilgamesh $(BENCH_ARGS)

# Your own app on every strategy and the peers:
#   make bench-app WSGI=app:app APP_PATH="src venv/lib/python3.13/site-packages" REQUEST='GET /x'
# (or ASGI=module:app for an ASGI app, against uvicorn and Hypercorn; APP=module for
# @gilgamesh.route handlers; more requests through BENCH_ARGS="--request ...").
bench-app: build
	@if [ -z "$(WSGI)$(ASGI)$(APP)" ] || [ -z "$(REQUEST)" ]; then \
	  echo "usage: make bench-app WSGI=module:callable|ASGI=module:app [APP_PATH='dir ...'] REQUEST='GET /path' [BENCH_ARGS=...]"; exit 2; fi
	/usr/bin/python3 loadtest/run --binary $(BUILD_DIR)/gilgamesh \
	  $(if $(ASGI),--asgi '$(ASGI)',$(if $(WSGI),--wsgi '$(WSGI)',--app '$(APP)')) \
	  $(foreach d,$(APP_PATH),--pythonpath '$(d)') --request '$(REQUEST)' \
	  --peers $(if $(ASGI),uvicorn$(COMMA)hypercorn,gunicorn$(COMMA)gunicorn-gthread$(COMMA)uwsgi) $(BENCH_ARGS)

# Memory while workers are recycled: every strategy, --max-requests 200, mixed load,
# SOAK_SECONDS each (40 minutes for the four strategies by default).
SOAK_SECONDS ?= 600
soak: build
	/usr/bin/python3 loadtest/run --soak $(SOAK_SECONDS) --binary $(BUILD_DIR)/gilgamesh $(SOAK_ARGS)

# libFuzzer targets (tests/fuzz), built with Debian's clang (installed if missing)
# in $(FUZZ_BUILD_DIR) with ASan+UBSan; each runs FUZZ_SECONDS from its seed
# corpus in tests/fuzz/corpus/ and stops. New inputs go to $(FUZZ_BUILD_DIR)/corpus/,
# crashes to $(FUZZ_BUILD_DIR)/crashes/ (the run fails if there is one).
FUZZ_SECONDS ?= 60
FUZZ_BUILD_DIR ?= build-fuzz
FUZZ_TARGETS ?= request query frames
fuzz: setup
	@GILGAMESH_WITH_FUZZ=1 bash scripts/install-deps.sh
	@cmake -S . -B $(FUZZ_BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
	  -DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++ -DGILGAMESH_FUZZ=ON \
	  -DGILGAMESH_PYTHON=$(GILGAMESH_PYTHON) -DGILGAMESH_PYTHON_FT= >/dev/null
	@cmake --build $(FUZZ_BUILD_DIR) -j$$(nproc) --target $(addprefix fuzz_,$(FUZZ_TARGETS))
	@bash tests/fuzz/run.sh $(FUZZ_BUILD_DIR) $(FUZZ_SECONDS) $(FUZZ_TARGETS)

clean:
	rm -rf $(BUILD_DIR) $(FUZZ_BUILD_DIR)
