# The two commands a newcomer needs:
#   make run    build the plugins and the gateway, serve config/gateway.toml
#   make test   install what the tests need, build everything, run every test
CARGO ?= cargo
PLUGIN_OUT := target/plugins/wasm32-wasip2/release
# Plugins copied to plugins/dist, the folder the default config loads from.
SHIPPED := headers ratelimit auth tenant cache ext_authz

# The example filters in every language, as README.md builds them.
EXAMPLES := target/examples
PY_TOOLS := target/toolchains/python/bin

.PHONY: setup setup-run plugins build run test bench bench-deps vs-nginx vs-nginx-tls l4 peers profile soak-reload examples fuzz static image

# Serving needs Rust and its wasm target; the tests and the examples also
# need Redis, Prometheus, Node.js and Python (scripts/setup.sh says which).
setup-run:
	scripts/setup.sh --run

setup:
	scripts/setup.sh

plugins: setup-run
	$(CARGO) build --release --target wasm32-wasip2 --manifest-path plugins/Cargo.toml --target-dir target/plugins
	@mkdir -p plugins/dist
	@for p in $(SHIPPED); do \
	  cmp -s $(PLUGIN_OUT)/$$p.wasm plugins/dist/$$p.wasm || cp $(PLUGIN_OUT)/$$p.wasm plugins/dist/$$p.wasm; \
	done

build: plugins
	$(CARGO) build --release

run: build
	target/release/gateway run

# Only the crates that hold unit tests are built as native test binaries:
# the test plugins and the example have none, and each would otherwise be
# compiled and fat-LTO linked for nothing (109 s of a cold run, now 31 s).
UNIT_TESTED := filter-sdk headers ratelimit auth tenant cache ext-authz

test: setup plugins static
	$(CARGO) test --release --manifest-path plugins/Cargo.toml --target-dir target/plugins $(addprefix -p ,$(UNIT_TESTED))
	$(PY_TOOLS)/python -m unittest discover -s plugins/examples/redact-json -p 'test_*.py'
	$(CARGO) test --release

# The gateway as one static binary, musl's libc linked in, for the container
# image: target/x86_64-unknown-linux-musl/release/gateway. *ring*'s C is
# compiled with musl-gcc (cc-rs picks it for musl targets); setup --static
# installs it and the Rust target.
MUSL_TARGET := x86_64-unknown-linux-musl

static:
	scripts/setup.sh --static
	$(CARGO) build --release --target $(MUSL_TARGET) --bin gateway

# The container image localhost/gateway:latest (Containerfile), with podman;
# deploy/container/build.sh stages its context under target/image.
image: static plugins
	scripts/setup.sh --image
	deploy/container/build.sh localhost/gateway:latest

# server-timing (Rust), shard-header and validate-json (JavaScript; both with
# the componentize-js setup installs in shard-header), deny-paths and
# redact-json (Python) and require-user-agent (WAT), built into target/examples.
examples: setup build
	@mkdir -p $(EXAMPLES)
	cp $(PLUGIN_OUT)/server_timing.wasm $(EXAMPLES)/server-timing.wasm
	cd plugins/examples/shard-header && npm run --silent build
	mv plugins/examples/shard-header/shard-header.wasm $(EXAMPLES)/
	cd plugins/examples/validate-json && PATH=../shard-header/node_modules/.bin:$$PATH npm run --silent build
	mv plugins/examples/validate-json/validate-json.wasm $(EXAMPLES)/
	$(PY_TOOLS)/componentize-py -d wit -w plugin componentize -p plugins/examples/deny-paths deny_paths -o $(EXAMPLES)/deny-paths.wasm
	$(PY_TOOLS)/componentize-py -d wit/v0.2 -w plugin componentize -p plugins/examples/redact-json redact_json -o $(EXAMPLES)/redact-json.wasm
	target/release/gateway plugin componentize plugins/examples/require-user-agent/filter.wat -o $(EXAMPLES)/require-user-agent.wasm

bench: examples
	$(CARGO) bench --bench filters
	$(CARGO) bench --bench allocations
	$(CARGO) bench --bench languages
	$(CARGO) bench --bench startup

bench-deps:
	scripts/setup.sh --bench

# The whole gateway against nginx on this machine: the floor of its stack
# (hyper alone, benches/floor.rs), plain, with the header filter, with four
# filters that do nothing (a call's own cost), and with all four shipped
# plugins (see README.md, Performance).
vs-nginx: build bench-deps
	$(CARGO) build --release --example floor
	FLOOR_POOL=own ../shared/bench/vs-nginx.sh -- target/release/examples/floor
	../shared/bench/vs-nginx.sh -- target/release/gateway run --config benches/vs-nginx/plain.toml
	../shared/bench/vs-nginx.sh -- target/release/gateway run --config benches/vs-nginx/headers.toml
	../shared/bench/vs-nginx.sh -- target/release/gateway run --config benches/vs-nginx/probes.toml
	../shared/bench/vs-nginx.sh -p '/?api_key=bench-key-0123456789' -- target/release/gateway run --config benches/vs-nginx/plugins.toml

# The gateway terminating TLS against nginx with the same certificate:
# keep-alive requests and full handshakes (see README.md, Performance).
vs-nginx-tls: build bench-deps
	benches/vs-nginx-tls.sh

# TCP routes against HAProxy (mode tcp) and nginx's stream module: one
# connection's throughput, connections per second, CPU per GiB and per
# connection.
l4: build bench-deps
	benches/l4.sh

# HAProxy, Caddy and nginx + njs (the shipped plugins' policy), each against
# nginx as vs-nginx measures the gateway.
peers: bench-deps
	../shared/bench/peers.sh

# Where the CPU goes under each vs-nginx load: flamegraphs and the hottest
# functions in target/profile (see benches/profile.sh).
profile: build bench-deps
	benches/profile.sh

# A thousand reloads, each compiling a new plugin version, against resident
# memory (opt-in: it takes a minute or two).
soak-reload: plugins
	$(CARGO) test --release --test e2e reload:: -- --ignored --nocapture

# Fuzzes the request head, host and config parsers, FUZZ_SECONDS each (needs the nightly toolchain; not part of `make test`; see SECURITY.md).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := request_head host config
# Sanitizer none: the gateway is safe Rust (#![deny(unsafe_code)]; the one
# exception loads the compile cache's checked entries, which no fuzz target
# reaches), so panics are what the fuzzers hunt, and without ASan builds
# and runs cost about half. Its own target dir keeps target/release's cache intact.
FUZZ_CARGO := nice -n 15 $(CARGO) +nightly fuzz
FUZZ_FLAGS := -s none --target-dir $(CURDIR)/target/fuzz
FUZZ_DIR := $(CURDIR)/fuzz

fuzz:
	@command -v cargo-fuzz >/dev/null || nice -n 15 $(CARGO) install cargo-fuzz --locked
	cd fuzz && $(FUZZ_CARGO) build $(FUZZ_FLAGS)
	@failed=; for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  (cd fuzz && $(FUZZ_CARGO) run $(FUZZ_FLAGS) $$t $(FUZZ_DIR)/corpus/$$t $(FUZZ_DIR)/seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=4096 -dict=$(FUZZ_DIR)/dicts/$$t.dict) || failed="$$failed $$t"; \
	done; \
	if [ -n "$$failed" ]; then echo "fuzz: findings in$$failed (see fuzz/artifacts/)"; exit 1; fi

# A load scenario by its short name: `make load SCENARIO=spike` runs
# `gateway scenario load-spike` (steady, ramp, spike, soak, rate-limit or
# breaker) with oha, which setup installs; ARGS adds options, e.g.
# `make load SCENARIO=soak ARGS=--short`. Results in target/scenarios/.
SCENARIO ?= steady
.PHONY: load
load: setup build
	target/release/gateway scenario load-$(SCENARIO) $(ARGS)
