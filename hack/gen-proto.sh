#!/usr/bin/env bash
# Regenerates the Go code of api/ from its .proto files. The output is
# committed so that `go build` needs neither protoc nor its plugins.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
bin="$PWD/.bin"
mkdir -p "$bin"
command -v protoc >/dev/null || { echo "protoc missing: apt-get install -y protobuf-compiler" >&2; exit 1; }
GOBIN="$bin" go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
GOBIN="$bin" go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
GOBIN="$bin" go install github.com/grpc-ecosystem/grpc-gateway/v2/protoc-gen-grpc-gateway@v2.33.0
export PATH="$bin:$PATH"
protoc -I api \
  --go_out=api --go_opt=paths=source_relative \
  --go-grpc_out=api --go-grpc_opt=paths=source_relative \
  --grpc-gateway_out=api --grpc-gateway_opt=paths=source_relative \
  --grpc-gateway_opt=grpc_api_configuration=api/meridian/v1/http.yaml \
  api/meridian/v1/resources.proto api/meridian/v1/service.proto api/meridian/v1/trace.proto \
  api/meridian/v1/flowlog.proto
protoc -I api \
  --go_out=api --go_opt=paths=source_relative \
  --go-grpc_out=api --go-grpc_opt=paths=source_relative \
  api/agent/v1/agent.proto api/agent/v1/local.proto api/agent/v1/flowlog_local.proto \
  api/agent/v1/livetrace_local.proto
