# FHIR Bulk Data $export as an Azure Functions custom handler.
# `make help` lists the targets.

SHELL := /bin/bash
GO    ?= go
DIST  ?= dist
export DIST
LDFLAGS := -s -w -X main.version=$(shell git describe --always --dirty 2>/dev/null || echo dev)
# staticcheck, pinned: `go run` fetches this version once into the module
# cache, so CI needs no global install. v0.8.2 is built for Go 1.26.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z][a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

.PHONY: build
build: ## Build dist/handler, dist/fhir-sample, dist/bulk-client and dist/dev-issuer
	@mkdir -p $(DIST)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(DIST)/handler ./handler
	CGO_ENABLED=0 $(GO) build -trimpath -o $(DIST)/fhir-sample ./cmd/fhir-sample
	CGO_ENABLED=0 $(GO) build -trimpath -o $(DIST)/bulk-client ./cmd/bulk-client
	CGO_ENABLED=0 $(GO) build -trimpath -o $(DIST)/dev-issuer ./cmd/dev-issuer

.PHONY: run
run: build ## Run locally: Azurite, the sample FHIR server and `handler serve` on 127.0.0.1:7071
	@bash scripts/run-local.sh

.PHONY: test
test: build package ## Unit, integration (Azurite), end-to-end and emulated Functions host tests; starts and stops Azurite itself
	@bash scripts/run-tests.sh

.PHONY: bench
bench: build ## End-to-end scenarios a-c (100 patients; 200 ms source with windows off/on; 540 MB) on Azurite, then the Go benchmarks; see docs/benchmarks.md
	@bash scripts/bench.sh

.PHONY: fault
fault: build ## The SIGKILL fault-injection test with 100 kills (make test runs it with 20)
	@FAULT_KILLS=100 TEST_PACKAGES=./tests/e2e/ GO_TEST_FLAGS="-v -run TestSIGKILL" bash scripts/run-tests.sh

.PHONY: unit
unit: ## Unit tests only (no Azurite)
	EXPORT_INTEGRATION= $(GO) test -count=1 ./...

.PHONY: check
check: ## gofmt, go vet, staticcheck and the unit tests under the race detector (no Azurite)
	@unformatted=$$(gofmt -l $$($(GO) list -f '{{.Dir}}' ./...) | sort -u); \
	if [[ -n $$unformatted ]]; then echo "gofmt -l lists files to format:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	EXPORT_INTEGRATION= $(GO) test -race -short -count=1 ./...

.PHONY: package
package: ## Build dist/app.zip, deployable to Azure Functions as it is
	@bash scripts/package.sh

.PHONY: clean
clean: ## Remove build output
	rm -rf $(DIST)
