// Package pb holds the generated protobuf messages of the leasenode client
// protocol (leasenode.proto, package leasenode.v1), and pbconnect the
// connect-go client and handler for its LeaseService. The same messages carry
// the client API (Connect, gRPC and gRPC-Web through connect-go) and the
// node-to-node forwarding RPC.
//
// The generated files (leasenode.pb.go and pbconnect/leasenode.connect.go)
// are committed; do not edit them. To regenerate after changing
// leasenode.proto, run
//
//	go generate ./transport/pb
//
// from the module root. It needs on PATH:
//
//   - protoc (generated with libprotoc 3.21.12, Debian's protobuf-compiler,
//     whose /usr/include provides google/protobuf/duration.proto);
//   - protoc-gen-go: go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
//   - protoc-gen-connect-go: go install connectrpc.com/connect/cmd/protoc-gen-connect-go@v1.19.1
//
// Keep the plugin versions in step with the google.golang.org/protobuf and
// connectrpc.com/connect versions required in go.mod.
package pb

//go:generate protoc -I . --go_out=. --go_opt=paths=source_relative --connect-go_out=. --connect-go_opt=paths=source_relative leasenode.proto
