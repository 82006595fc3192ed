// Package deploy holds no code: its tests check the packaging in this
// directory (docker/, systemd/, kubernetes/). They parse the systemd unit
// and the Kubernetes manifests, check the manifests against the
// Kubernetes API types (unknown fields and wrong types are errors, as
// kubectl's validation would say) and their cross-references, and start
// agents built from this checkout with exactly the flags, environment and
// files the unit and the StatefulSet pass, mapped onto loopback ports.
//
// It is a module of its own so that the Kubernetes API types it checks
// against stay out of the leasenode module's dependencies: run it with
// `cd deploy && go test ./...` (.ci/run does).
package deploy
