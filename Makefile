# The watermark platform. `make run-all` starts both services with an offline demo; `make test` runs
# every test. Both install what is missing first.
SWIFT ?= swift
BIN = $(shell $(SWIFT) build --show-bin-path 2>/dev/null)
CONFIG ?= debug

.PHONY: deps build test run-storage run-collection run-all bench lint clean-data

deps:
	@bash scripts/install-deps.sh

build: deps
	$(SWIFT) build -c $(CONFIG)

## Unit and integration tests (integration tests start the built executables), the OpenAPI lint of every
## document the service can serve, API fuzzing with schemathesis against the built service, then the
## deployment lint.
test: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	STORAGE_SERVICE_BIN=$(BIN)/storage-service bash scripts/lint-openapi.sh
	STORAGE_SERVICE_BIN=$(BIN)/storage-service bash scripts/schemathesis.sh
	bash scripts/lint-deploy.sh

## Storage service on :8000 with its database in ./data/.
run-storage: build
	DATABASE_PATH=$${DATABASE_PATH:-data/watermarks.db} $(BIN)/storage-service

## Collection service on :8001 with the demo sources, talking to the storage on :8000.
run-collection: build
	PORT=$${PORT:-8001} DATA_DIR=$${DATA_DIR:-data/collection} \
	COLLECTION_CONFIG=$${COLLECTION_CONFIG:-demo/config/sources.json} \
	STORAGE_SERVICE_URL=$${STORAGE_SERVICE_URL:-http://127.0.0.1:8000} $(BIN)/collection-service

## Both services with the offline demo; Ctrl-C stops both.
run-all: build
	@bash scripts/run-all.sh

## Load benchmark of the storage service against a Hummingbird hello world of the same run (ratios), at 1 and
## 64 connections; writes bench/results/<date>.json. PROFILE=collector: the collection path against a Python
## loop (bench/results/<date>-collector.json); PROFILE=scale: a million watermarks against a thousand
## (bench/results/<date>-scale.json); PROFILE=all: every one.
bench: deps
	@bash scripts/bench.sh

lint:
	$(SWIFT) format lint --recursive Services Shared Tests bench/Hello
	bash scripts/lint-openapi.sh
	bash scripts/lint-deploy.sh

## Removes the demo's database and collected data (the next run-all starts from scratch).
clean-data:
	rm -rf data
