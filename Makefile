# Meridian: `make demo` runs the main job on the embedded default,
# `make test` passes the tests (installing what they need first).
SHELL := /bin/bash
export PATH := $(PATH):/usr/local/go/bin
GO ?= go
BIN := bin
# Seconds each fuzz target runs in `make test` (longer: make fuzz FUZZTIME=5m).
FUZZTIME ?= 5s

.PHONY: all build test unit fuzz bench demo generate lint deps clean

all: build

build:
	$(GO) build -o $(BIN)/ ./cmd/...

deps:
	./hack/deps.sh

# The whole suite runs as root: eBPF, namespaces and real services need it.
test: deps build lint unit fuzz

unit:
	$(GO) test -count=1 -timeout 20m ./...

fuzz:
	./hack/fuzz.sh $(FUZZTIME)

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m ./... | tee bench.out

demo: deps build
	./hack/demo.sh

generate:
	./hack/gen-proto.sh
	$(GO) generate ./bpf/...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf $(BIN) bench.out
